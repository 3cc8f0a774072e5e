//! Sealing at rest: ChaCha20-Poly1305 under a 32-byte key kept in a 0600 file of the data dir.
//! The hub seals Secrets in its store; agents seal the Secrets they cache. Sealed bytes are
//! `nonce (12) || ciphertext || tag (16)`.
use ring::aead;
use std::path::Path;

pub struct Sealer(aead::LessSafeKey);

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .unwrap_or_else(|_| unreachable!("32-byte chacha20-poly1305 key"));
        Sealer(aead::LessSafeKey::new(unbound))
    }

    /// The key in `path`, created (random, mode 0600) when missing.
    pub fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes.try_into().map_err(|_| {
                std::io::Error::other(format!("{}: expected 32 bytes", path.display()))
            });
        }
        let key: [u8; 32] = rand::random();
        crate::write_private(path, &key)?;
        Ok(key)
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut buf = plain.to_vec();
        // Sealing only fails for inputs beyond ChaCha20's 256 GiB limit.
        self.0
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut buf,
            )
            .unwrap_or_else(|_| unreachable!("input within chacha20-poly1305 limits"));
        let mut out = Vec::with_capacity(12 + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    /// None when the bytes were not sealed with this key (or were altered).
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 + 16 {
            return None;
        }
        let (nonce, rest) = sealed.split_at(12);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, aead::Aad::empty(), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(s.open(&sealed).as_deref(), Some(&b"hunter2"[..]));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(&bad), None);
        assert_eq!(Sealer::new(&[8; 32]).open(&sealed), None);
        assert_eq!(s.open(b"short"), None);
    }
}
