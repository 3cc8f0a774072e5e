//! The join token format, `FLT1.<ca-sha256>.<id>.<secret>`: shared by the hub that issues
//! tokens and the agents that present them (the CA hash is what an agent pins before joining).

pub const PREFIX: &str = "FLT1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

/// Parses a token; None when it is not well-formed.
pub fn parse(token: &str) -> Option<ParsedToken> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let hexlen = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [PREFIX, ca, id, secret] if hexlen(ca, 64) && hexlen(id, 8) && hexlen(secret, 32) => {
            Some(ParsedToken {
                ca_fingerprint: ca.to_ascii_lowercase(),
                id: id.to_ascii_lowercase(),
                secret: secret.to_ascii_lowercase(),
            })
        }
        _ => None,
    }
}

pub fn format(ca_fingerprint: &str, id: &str, secret: &str) -> String {
    format!("{PREFIX}.{ca_fingerprint}.{id}.{secret}")
}
