//! Encrypted bundles as the Capgo CLI makes them and devices open them, seen from the side of
//! someone who holds only the app's public key (as the server and every device do).
//!
//! `bundle encrypt` draws an AES-128 key and IV, encrypts the whole zip with AES-128-CBC
//! (PKCS#7 padding), and "encrypts" the AES key with the app's RSA *private* key (PKCS#1 v1.5,
//! block type 1: a raw signature without DigestInfo). The checksum of the plain zip is treated
//! the same way: hex-decoded for current plugins ("V3", sent as 512 hex characters), or
//! base64-decoded for old ones ("V2", sent as base64). Anyone with the public key recovers
//! both, so the server can decrypt an upload and check it exactly as a device will.

use std::fmt;

use aws_lc_rs::cipher::{DecryptionContext, StreamingDecryptingKey, UnboundCipherKey, AES_128};
use aws_lc_rs::iv::FixedLength;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use num_bigint::BigUint;

use super::{InvalidInput, UnixMillis};

/// Longest PEM text accepted for a public key (a 4096-bit key is about 800 characters).
pub const MAX_PEM_LEN: usize = 8 * 1024;
/// Smallest and largest RSA modulus accepted, in bits. The CLI makes 2048-bit keys.
const MIN_BITS: u64 = 2048;
const MAX_BITS: u64 = 4096;
/// AES-128: 16-byte keys and IVs.
const AES_LEN: usize = 16;
/// `rsaEncryption`, 1.2.840.113549.1.1.1, as DER content bytes.
const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The public key an app's bundles are encrypted for, as registered through the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKey {
    pub app_id: String,
    pub public_key: RsaPublicKey,
    pub registered_at: UnixMillis,
    /// Who registered it (a principal name).
    pub registered_by: String,
}

/// An RSA public key (read from the CLI's `.capgo_key_v2.pub`, PKCS#1 `RSA PUBLIC KEY`, or
/// from an SPKI `PUBLIC KEY`).
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    n: BigUint,
    e: BigUint,
    /// The modulus length in bytes: every RSA block is this long.
    size: usize,
    /// The key as PKCS#1 DER, the form the CLI writes and derives `key_id` from.
    pkcs1: Vec<u8>,
}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPublicKey({}, {} bits)", self.key_id(), self.bits())
    }
}

impl RsaPublicKey {
    /// Reads a PEM public key. A private key is refused with a message that says so (and is
    /// never echoed).
    pub fn from_pem(pem: &str) -> Result<RsaPublicKey, InvalidInput> {
        if pem.len() > MAX_PEM_LEN {
            return Err(InvalidInput(format!(
                "public_key is longer than {MAX_PEM_LEN} characters"
            )));
        }
        let pem = pem.trim();
        if pem.contains("PRIVATE KEY") {
            return Err(InvalidInput(
                "that is a private key: register the public key (`.capgo_key_v2.pub`, or \
                 `publicKey` in capacitor.config) and keep the private key secret"
                    .into(),
            ));
        }
        let (label, body) = pem_body(pem).ok_or_else(|| {
            InvalidInput(
                "public_key must be a PEM public key (-----BEGIN RSA PUBLIC KEY----- ... as \
                 `npx @capgo/cli key create` writes to .capgo_key_v2.pub)"
                    .into(),
            )
        })?;
        let der = STANDARD
            .decode(body)
            .map_err(|_| InvalidInput("the public key's PEM body is not base64".into()))?;
        let pkcs1 = match label {
            "RSA PUBLIC KEY" => der,
            _ => spki_to_pkcs1(&der)
                .ok_or_else(|| InvalidInput("the PUBLIC KEY is not an RSA public key".into()))?,
        };
        RsaPublicKey::from_pkcs1(pkcs1)
    }

    fn from_pkcs1(pkcs1: Vec<u8>) -> Result<RsaPublicKey, InvalidInput> {
        let malformed = || InvalidInput("the public key is not a valid RSA public key".into());
        let (content, rest) = der_read(&pkcs1, TAG_SEQUENCE).ok_or_else(malformed)?;
        if !rest.is_empty() {
            return Err(malformed());
        }
        let (n, content) = der_read(content, TAG_INTEGER).ok_or_else(malformed)?;
        let (e, content) = der_read(content, TAG_INTEGER).ok_or_else(malformed)?;
        if !content.is_empty() {
            return Err(malformed());
        }
        let (n, e) = (
            positive(n).ok_or_else(malformed)?,
            positive(e).ok_or_else(malformed)?,
        );
        let bits = n.bits();
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(InvalidInput(format!(
                "the public key has {bits} bits; use an RSA key of {MIN_BITS} to {MAX_BITS} bits \
                 (the CLI makes 2048)"
            )));
        }
        // Small odd exponents only (65537 in practice): bounds the work of every check.
        if !n.bit(0) || !e.bit(0) || e.bits() > 32 || e < BigUint::from(3u8) {
            return Err(malformed());
        }
        Ok(RsaPublicKey {
            size: usize::try_from(bits.div_ceil(8)).map_err(|_| malformed())?,
            n,
            e,
            pkcs1,
        })
    }

    /// What the CLI sends as `key_id`: the first 20 characters of the PKCS#1 PEM body.
    pub fn key_id(&self) -> String {
        let mut body = STANDARD.encode(&self.pkcs1);
        body.truncate(20);
        body
    }

    pub fn bits(&self) -> u64 {
        self.n.bits()
    }

    /// The key as the CLI writes it: PKCS#1 PEM with 64-character lines.
    pub fn to_pem(&self) -> String {
        let body = STANDARD.encode(&self.pkcs1);
        let mut pem = String::from("-----BEGIN RSA PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END RSA PUBLIC KEY-----\n");
        pem
    }

    /// What `crypto.publicDecrypt` (PKCS#1 v1.5) returns for `block`: the payload of a block the
    /// private key made, or `None` when the block was not made by this key's private half.
    pub fn recover(&self, block: &[u8]) -> Option<Vec<u8>> {
        if block.len() != self.size {
            return None;
        }
        let c = BigUint::from_bytes_be(block);
        if c >= self.n {
            return None;
        }
        let m = c.modpow(&self.e, &self.n).to_bytes_be();
        let mut padded = vec![0u8; self.size.checked_sub(m.len())?];
        padded.extend_from_slice(&m);
        // 00 01 FF..FF (at least 8) 00 payload
        let rest = padded.strip_prefix(&[0x00, 0x01])?;
        let ones = rest.iter().take_while(|&&b| b == 0xff).count();
        let payload = rest[ones..].strip_prefix(&[0x00])?;
        (ones >= 8).then(|| payload.to_vec())
    }
}

/// The AES key and IV of one encrypted bundle, recovered from its `ivSessionKey`.
pub struct SessionKey {
    iv: [u8; AES_LEN],
    key: [u8; AES_LEN],
}

impl SessionKey {
    /// Recovers `base64(IV):base64(RSA block)` with the app's public key.
    pub fn open(session_key: &str, public_key: &RsaPublicKey) -> Result<SessionKey, InvalidInput> {
        let (iv, block) = session_key.split_once(':').ok_or_else(|| {
            InvalidInput("session_key must be `base64(IV):base64(encrypted key)`".into())
        })?;
        let iv: [u8; AES_LEN] = STANDARD
            .decode(iv)
            .ok()
            .and_then(|iv| iv.try_into().ok())
            .ok_or_else(|| InvalidInput("session_key: the IV must be 16 bytes of base64".into()))?;
        let key = STANDARD
            .decode(block)
            .ok()
            .and_then(|block| public_key.recover(&block))
            .ok_or_else(|| wrong_key("session_key", public_key))?;
        let key: [u8; AES_LEN] = key.try_into().map_err(|_| {
            InvalidInput("session_key does not hold an AES-128 key (16 bytes)".into())
        })?;
        Ok(SessionKey { iv, key })
    }

    /// A decryptor for the bundle's bytes.
    pub fn decryptor(&self) -> Result<BundleDecryptor, InvalidInput> {
        let failed = |_| InvalidInput("cannot set up AES-128-CBC with the session key".into());
        let key = UnboundCipherKey::new(&AES_128, &self.key).map_err(failed)?;
        let iv = DecryptionContext::Iv128(FixedLength::from(self.iv));
        Ok(BundleDecryptor {
            key: StreamingDecryptingKey::cbc_pkcs7(key, iv).map_err(failed)?,
            seen: 0,
        })
    }
}

/// AES-128-CBC (PKCS#7) decryption of a bundle fed in pieces.
pub struct BundleDecryptor {
    key: StreamingDecryptingKey,
    seen: u64,
}

impl BundleDecryptor {
    /// Decrypts `input`, appending what it yields to `output`.
    pub fn update(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<(), InvalidInput> {
        let start = output.len();
        output.resize(start + input.len() + AES_LEN, 0);
        let written = self
            .key
            .update(input, &mut output[start..])
            .map_err(|_| not_decryptable())?
            .written()
            .len();
        output.truncate(start + written);
        self.seen += input.len() as u64;
        Ok(())
    }

    /// Checks the padding and appends the last plaintext to `output`.
    pub fn finish(self, output: &mut Vec<u8>) -> Result<(), InvalidInput> {
        if self.seen == 0 || !self.seen.is_multiple_of(AES_LEN as u64) {
            return Err(InvalidInput(
                "the encrypted bundle's length is not a whole number of AES blocks: it is not \
                 what `bundle encrypt` wrote"
                    .into(),
            ));
        }
        let mut last = [0u8; AES_LEN];
        let written = self
            .key
            .finish(&mut last)
            .map_err(|_| not_decryptable())?
            .written()
            .len();
        output.extend_from_slice(&last[..written]);
        Ok(())
    }
}

/// The checksum an encrypted checksum stands for, recovered as a device does: hex of the
/// recovered bytes for "V3" (hex input), base64 of them for legacy "V2" (base64 input). Either
/// way the result is the plain zip's checksum as `bundle zip` printed it (SHA-256, or CRC32).
pub fn recover_checksum(
    encrypted: &str,
    public_key: &RsaPublicKey,
) -> Result<String, InvalidInput> {
    let is_hex = !encrypted.is_empty() && encrypted.bytes().all(|b| b.is_ascii_hexdigit());
    let block = if is_hex {
        hex::decode(encrypted).ok()
    } else {
        STANDARD.decode(encrypted).ok()
    };
    let payload = block
        .and_then(|block| public_key.recover(&block))
        .ok_or_else(|| wrong_key("checksum", public_key))?;
    Ok(if is_hex {
        hex::encode(payload)
    } else {
        STANDARD.encode(payload)
    })
}

fn wrong_key(field: &str, public_key: &RsaPublicKey) -> InvalidInput {
    InvalidInput(format!(
        "{field} was not made with the private key of the app's registered public key \
         (key_id {}): encrypt with the app's key, or register the key the bundle was encrypted for",
        public_key.key_id()
    ))
}

fn not_decryptable() -> InvalidInput {
    InvalidInput(
        "the bundle does not decrypt with its session_key (AES-128-CBC): the file or the \
         session_key was changed after `bundle encrypt`"
            .into(),
    )
}

/// The label and base64 body of a PEM block (`RSA PUBLIC KEY` or `PUBLIC KEY`).
fn pem_body(pem: &str) -> Option<(&'static str, String)> {
    ["RSA PUBLIC KEY", "PUBLIC KEY"]
        .into_iter()
        .find_map(|label| {
            let inner = pem
                .strip_prefix(&format!("-----BEGIN {label}-----"))?
                .strip_suffix(&format!("-----END {label}-----"))?;
            Some((label, inner.split_whitespace().collect()))
        })
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// Reads one DER element with `tag`: its content and what follows it.
fn der_read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if !(1..=3).contains(&count) || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (
            bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A DER INTEGER's content as a positive number.
fn positive(content: &[u8]) -> Option<BigUint> {
    let (&first, _) = content.split_first()?;
    (first & 0x80 == 0).then(|| BigUint::from_bytes_be(content))
}

/// SubjectPublicKeyInfo { AlgorithmIdentifier { rsaEncryption, NULL }, BIT STRING pkcs1 }.
fn spki_to_pkcs1(der: &[u8]) -> Option<Vec<u8>> {
    let (spki, rest) = der_read(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (algorithm, spki) = der_read(spki, TAG_SEQUENCE)?;
    let (oid, parameters) = der_read(algorithm, TAG_OID)?;
    if oid != RSA_ENCRYPTION_OID || !(parameters.is_empty() || parameters == [TAG_NULL, 0]) {
        return None;
    }
    let (bits, rest) = der_read(spki, TAG_BIT_STRING)?;
    let pkcs1 = bits.strip_prefix(&[0])?;
    rest.is_empty().then(|| pkcs1.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real Capgo CLI's output (tests/fixtures/cli, made by its regenerate.sh).
    const PUBLIC: &str = include_str!("../../tests/fixtures/cli/public_key.pem");
    const OTHER_PUBLIC: &str = include_str!("../../tests/fixtures/cli/other_public_key.pem");
    const PRIVATE: &str = include_str!("../../tests/fixtures/cli/private_key.pem");
    const PLAIN: &[u8] = include_bytes!("../../tests/fixtures/cli/bundle.zip");
    const V3_ZIP: &[u8] = include_bytes!("../../tests/fixtures/cli/bundle.zip_encrypted.zip");
    const V2_ZIP: &[u8] = include_bytes!("../../tests/fixtures/cli/bundle-v2.zip_encrypted.zip");
    const FIXTURES: &str = include_str!("../../tests/fixtures/cli/encryption.json");

    fn fixture(run: &str, field: &str) -> String {
        let doc: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        doc[run][field].as_str().unwrap().to_string()
    }

    fn key() -> RsaPublicKey {
        RsaPublicKey::from_pem(PUBLIC).unwrap()
    }

    fn decrypt(zip: &[u8], session_key: &str, piece: usize) -> Result<Vec<u8>, InvalidInput> {
        let mut decryptor = SessionKey::open(session_key, &key())?.decryptor()?;
        let mut plain = Vec::new();
        for chunk in zip.chunks(piece) {
            decryptor.update(chunk, &mut plain)?;
        }
        decryptor.finish(&mut plain)?;
        Ok(plain)
    }

    #[test]
    fn reads_the_cli_key_and_its_key_id() {
        let key = key();
        assert_eq!(key.bits(), 2048);
        let doc: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        assert_eq!(key.key_id(), doc["key_id"].as_str().unwrap());
        // Written back exactly as the CLI wrote it.
        assert_eq!(key.to_pem(), PUBLIC);
        assert_ne!(
            RsaPublicKey::from_pem(OTHER_PUBLIC).unwrap().key_id(),
            key.key_id()
        );
    }

    #[test]
    fn reads_the_same_key_as_spki() {
        // The SPKI form of the fixture key: AlgorithmIdentifier + BIT STRING around PKCS#1.
        let pkcs1 = key().pkcs1;
        let mut bits = vec![0u8];
        bits.extend_from_slice(&pkcs1);
        let algorithm = der(
            TAG_SEQUENCE,
            &[der(TAG_OID, RSA_ENCRYPTION_OID), vec![5, 0]].concat(),
        );
        let spki = der(
            TAG_SEQUENCE,
            &[algorithm, der(TAG_BIT_STRING, &bits)].concat(),
        );
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(spki)
        );
        assert_eq!(RsaPublicKey::from_pem(&pem).unwrap(), key());
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            len @ 0..=127 => out.push(len as u8),
            len @ 128..=255 => out.extend([0x81, len as u8]),
            len => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn refuses_what_is_no_public_key() {
        let message = RsaPublicKey::from_pem(PRIVATE).unwrap_err().0;
        assert!(message.contains("private key"), "{message}");
        assert!(
            !message.contains("MII"),
            "the key is never echoed: {message}"
        );
        for bad in [
            "",
            "hello",
            "-----BEGIN RSA PUBLIC KEY-----\n!!!\n-----END RSA PUBLIC KEY-----",
            "-----BEGIN RSA PUBLIC KEY-----\nMAA=\n-----END RSA PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----",
        ] {
            assert!(RsaPublicKey::from_pem(bad).is_err(), "{bad}");
        }
        // A 512-bit key: too small.
        let small = der(
            TAG_SEQUENCE,
            &[
                der(TAG_INTEGER, &[[0u8].as_slice(), &[0xff; 64]].concat()),
                der(TAG_INTEGER, &[1, 0, 1]),
            ]
            .concat(),
        );
        let pem = format!(
            "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----",
            STANDARD.encode(small)
        );
        assert!(RsaPublicKey::from_pem(&pem)
            .unwrap_err()
            .0
            .contains("512 bits"));
    }

    #[test]
    fn decrypts_the_cli_bundles_in_any_piece_size() {
        for (run, zip) in [("v3", V3_ZIP), ("v2", V2_ZIP)] {
            let session_key = fixture(run, "session_key");
            for piece in [1, 7, 16, 100, 4096] {
                assert_eq!(
                    decrypt(zip, &session_key, piece).unwrap(),
                    PLAIN,
                    "{run} {piece}"
                );
            }
        }
    }

    #[test]
    fn recovers_both_checksum_formats() {
        let sha256 = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(PLAIN))
        };
        let doc: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        assert_eq!(doc["plain"]["sha256"], sha256.as_str());
        // V3: 512 hex characters; V2: the legacy base64 encoding of the hex text.
        assert_eq!(
            recover_checksum(&fixture("v3", "checksum"), &key()).unwrap(),
            sha256
        );
        assert_eq!(
            recover_checksum(&fixture("v2", "checksum"), &key()).unwrap(),
            sha256
        );
    }

    #[test]
    fn another_key_recovers_nothing() {
        let other = RsaPublicKey::from_pem(OTHER_PUBLIC).unwrap();
        let message = SessionKey::open(&fixture("v3", "session_key"), &other)
            .err()
            .unwrap()
            .0;
        assert!(message.contains(&other.key_id()), "{message}");
        assert!(recover_checksum(&fixture("v3", "checksum"), &other).is_err());
        assert!(recover_checksum(&fixture("v2", "checksum"), &other).is_err());
    }

    #[test]
    fn changed_bytes_do_not_decrypt_or_change_the_zip() {
        let session_key = fixture("v3", "session_key");
        // The last block carries the padding: changing it breaks the padding check.
        let mut tampered = V3_ZIP.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert!(decrypt(&tampered, &session_key, 64).is_err());
        // A change earlier decrypts, to other bytes (the zip and checksum checks catch those).
        let mut tampered = V3_ZIP.to_vec();
        tampered[40] ^= 0x01;
        assert_ne!(
            decrypt(&tampered, &session_key, 64).ok().as_deref(),
            Some(PLAIN)
        );
        // Truncated to a partial block.
        assert!(decrypt(&V3_ZIP[..V3_ZIP.len() - 3], &session_key, 64).is_err());
        // A changed session key block, or IV of the wrong length.
        let (iv, block) = session_key.split_once(':').unwrap();
        let mut raw = STANDARD.decode(block).unwrap();
        raw[10] ^= 0x01;
        let changed = format!("{iv}:{}", STANDARD.encode(raw));
        assert!(SessionKey::open(&changed, &key()).is_err());
        assert!(SessionKey::open(&format!("AAAA:{block}"), &key()).is_err());
    }

    #[test]
    fn recover_refuses_blocks_of_the_wrong_size_or_range() {
        let key = key();
        assert!(key.recover(&[]).is_none());
        assert!(key.recover(&[0xff; 256]).is_none()); // not below the modulus
        assert!(key.recover(&[0x00; 255]).is_none());
        assert!(key.recover(&[0x00; 256]).is_none()); // 0^e = 0: no 00 01 prefix
    }
}
