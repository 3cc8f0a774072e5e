//! Layer unpacking (placeholder until the real module lands).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unknown layer media type {0:?}")]
    MediaType(String),
}
pub enum Compression {
    None,
    Gzip,
    Zstd,
}
impl Compression {
    pub fn from_media_type(media_type: &str) -> Result<Compression, UnpackError> {
        Err(UnpackError::MediaType(media_type.to_string()))
    }
}
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {}
pub fn apply_layer(
    _root: &std::path::Path,
    _layer: impl std::io::Read,
    _c: Compression,
) -> Result<Stats, UnpackError> {
    Ok(Stats {})
}
