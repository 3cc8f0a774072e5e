//! Join tokens: `FLT1.<ca-sha256>.<id>.<secret>`. The CA hash lets a new agent pin the hub's
//! CA before it trusts anything (like K3s's `K10<hash>::` tokens); only a hash of the secret is stored.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use flotilla_proto::token::ParsedToken;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub secret_sha256: String,
    /// Unix seconds; None never expires.
    pub expires_at: Option<u64>,
    pub max_uses: Option<u32>,
    pub uses: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed join token")]
    Malformed,
    #[error("unknown join token")]
    Unknown,
    #[error("join token expired")]
    Expired,
    #[error("join token already used the maximum number of times")]
    Exhausted,
}

pub fn parse(token: &str) -> Result<ParsedToken, TokenError> {
    flotilla_proto::token::parse(token).ok_or(TokenError::Malformed)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a token string and the record to store under its id.
pub fn generate(
    ca_fingerprint: &str,
    ttl_secs: Option<u64>,
    max_uses: Option<u32>,
    now: u64,
) -> (String, String, TokenRecord) {
    let id = hex::encode(rand::random::<[u8; 4]>());
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let token = flotilla_proto::token::format(ca_fingerprint, &id, &secret);
    let record = TokenRecord {
        secret_sha256: hash_secret(&secret),
        expires_at: ttl_secs.map(|t| now + t),
        max_uses,
        uses: 0,
    };
    (token, id, record)
}

/// Checks a presented token against its record and counts the use. Pure: the caller stores
/// the updated record in the same transaction that issues the certificate.
pub fn redeem(parsed: &ParsedToken, record: &mut TokenRecord, now: u64) -> Result<(), TokenError> {
    let presented = hash_secret(&parsed.secret);
    // Comparing hashes rather than secrets: timing differences reveal only where two SHA-256
    // digests differ, which says nothing usable about the secret.
    if presented != record.secret_sha256 {
        return Err(TokenError::Unknown);
    }
    if record.expires_at.is_some_and(|e| now >= e) {
        return Err(TokenError::Expired);
    }
    if record.max_uses.is_some_and(|m| record.uses >= m) {
        return Err(TokenError::Exhausted);
    }
    record.uses += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifecycle() {
        let ca = "ab".repeat(32);
        let (token, id, mut rec) = generate(&ca, Some(60), Some(1), 1000);
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.id, id);
        assert_eq!(parsed.ca_fingerprint, ca);
        assert_eq!(redeem(&parsed, &mut rec, 1001), Ok(()));
        assert_eq!(redeem(&parsed, &mut rec, 1002), Err(TokenError::Exhausted));
        let (token, _, mut rec) = generate(&ca, Some(60), None, 1000);
        assert_eq!(
            redeem(&parse(&token).unwrap(), &mut rec, 1060),
            Err(TokenError::Expired)
        );
        let mut forged = parse(&token).unwrap();
        forged.secret = "0".repeat(32);
        assert_eq!(redeem(&forged, &mut rec, 1001), Err(TokenError::Unknown));
        assert_eq!(parse("FLT1.x.y.z"), Err(TokenError::Malformed));
    }
}
