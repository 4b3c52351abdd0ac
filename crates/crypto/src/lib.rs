//! WeChat's message encryption scheme ("WXBizMsgCrypt", 消息加解密), as used by
//! Official Accounts in safe mode, third-party platforms (第三方平台, e.g. the
//! `component_verify_ticket` push) and WeCom callbacks.
//!
//! # The scheme
//!
//! * **Key.** The `EncodingAESKey` configured on the platform is 43 base64
//!   characters; `base64_decode(EncodingAESKey + "=")` yields the 32-byte
//!   AES-256 key. The CBC IV is the first 16 bytes of that key.
//! * **Plaintext layout.** `random(16) ‖ u32_be(len(msg)) ‖ msg ‖ appid`, where
//!   `msg` is the UTF-8 XML message and `appid` identifies the receiver (the
//!   platform's appid, or a WeCom corp id / suite id).
//! * **Padding.** PKCS#7 to a **32-byte** block (pad byte values `1..=32`), not
//!   AES's 16: a standard 16-byte unpadder rejects about half of all valid
//!   messages. The padded plaintext is AES-256-CBC encrypted without further
//!   padding and base64-encoded (standard alphabet, padded).
//! * **Signature.** `msg_signature = hex(sha1(concat(sort([token, timestamp,
//!   nonce, encrypt]))))`, lowercase; the plain URL-verification `signature` is
//!   the same over `[token, timestamp, nonce]`.
//! * **Envelopes.** WeChat POSTs `<xml><ToUserName>…</ToUserName><Encrypt>…
//!   </Encrypt></xml>` (third-party platforms send `<AppId>` instead of
//!   `<ToUserName>`), with `timestamp`, `nonce` and `msg_signature` in the
//!   query string. An encrypted reply is
//!   `<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`.
//! * **Rotation.** When the `EncodingAESKey` is changed, messages encrypted
//!   with the previous key may still arrive; [`MsgCrypt`] keeps a current and
//!   an optional previous key and decryption tries them in that order.
//!   Encryption always uses the current key.
//!
//! Errors ([`CryptoError`]) say what is wrong but never carry key material,
//! the token or any decrypted bytes.
//!
//! For untrusted input use [`MsgCrypt::verify_and_decrypt`] (or
//! [`MsgCrypt::verify_and_decrypt_value`] for a WeCom `echostr`): the
//! signature is checked, in constant time, before anything is decrypted, so
//! the distinct padding/length errors cannot serve as a padding oracle to
//! someone who does not know the token. [`MsgCrypt::decrypt`] alone does no
//! authentication (the scheme has no MAC).

use std::fmt;
use std::fmt::Write as _;

use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use quick_xml::events::Event;
use quick_xml::Reader;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretString};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Largest POST body [`parse_envelope`] accepts (64 KiB). WeChat messages are
/// a few KiB at most.
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// Block size of WeChat's PKCS#7 variant (not AES's 16).
pub const PAD_BLOCK: usize = 32;

const RANDOM_LEN: usize = 16;
const LEN_PREFIX: usize = 4;

/// What went wrong. Messages never contain key material, the token or
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 characters of base64.
    #[error("invalid EncodingAESKey: {0}")]
    InvalidKey(&'static str),
    /// `msg_signature` / `signature` does not match.
    #[error("signature mismatch")]
    BadSignature,
    /// The `Encrypt` value is not valid base64.
    #[error("ciphertext is not valid base64")]
    BadBase64,
    /// The ciphertext is empty or not a whole number of AES blocks.
    #[error("ciphertext length {0} is not a positive multiple of 16")]
    BadCiphertextLength(usize),
    /// The decrypted PKCS#7 (32-byte block) padding is invalid: usually the
    /// wrong key or a corrupted ciphertext.
    #[error("bad padding (wrong key or corrupted ciphertext)")]
    BadPadding,
    /// The 4-byte length prefix does not fit the decrypted plaintext.
    #[error("message length prefix does not match the decrypted data")]
    LengthMismatch,
    /// The decrypted message or appid is not UTF-8.
    #[error("decrypted message is not UTF-8")]
    NotUtf8,
    /// The decrypted appid is not the expected receiver.
    #[error("appid in the message does not match the expected appid")]
    WrongAppId,
    /// The body is not an acceptable XML envelope.
    #[error("not a valid XML envelope: {0}")]
    NotXml(&'static str),
    /// The body contains a DTD or a non-predefined entity reference.
    #[error("XML DTDs and custom entities are not accepted")]
    DtdOrEntity,
    /// The envelope has no `<Encrypt>` element.
    #[error("XML envelope has no <Encrypt> element")]
    MissingEncrypt,
    /// Input larger than the accepted limit.
    #[error("input too large ({len} bytes, limit {limit})")]
    TooLarge { len: usize, limit: usize },
    /// A timestamp or nonce to put into a reply envelope has characters other
    /// than ASCII letters, digits, `-` and `_`.
    #[error("{0} must be non-empty ASCII alphanumerics")]
    BadParameter(&'static str),
}

/// A parsed `EncodingAESKey`: the 32-byte AES key. `Debug` is redacted.
pub struct EncodingAesKey(SecretBox<[u8; 32]>);

impl EncodingAesKey {
    /// Parses the 43-character key shown on the WeChat platform.
    ///
    /// The 43rd character carries 2 bits beyond the 256 used; like WeChat's
    /// own samples, they are ignored (the docs' sample key
    /// `abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG` has them set).
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        if s.len() != 43 {
            return Err(CryptoError::InvalidKey("must be 43 characters"));
        }
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &alphabet::STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::RequireNone),
        );
        let decoded = Zeroizing::new(
            LENIENT
                .decode(s.as_bytes())
                .map_err(|_| CryptoError::InvalidKey("not base64"))?,
        );
        let mut key = SecretBox::new(Box::new([0u8; 32]));
        if decoded.len() != 32 {
            return Err(CryptoError::InvalidKey("does not decode to 32 bytes"));
        }
        key.expose_secret_mut().copy_from_slice(&decoded);
        Ok(Self(key))
    }

    fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.bytes()[..16]);
        iv
    }
}

impl Clone for EncodingAesKey {
    fn clone(&self) -> Self {
        Self(SecretBox::new(Box::new(*self.bytes())))
    }
}

impl fmt::Debug for EncodingAesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncodingAesKey([REDACTED])")
    }
}

impl std::str::FromStr for EncodingAesKey {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A decrypted message.
#[derive(Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The message (XML for callbacks; the echo string for URL verification).
    pub message: String,
    /// The receiver id found in the plaintext (already checked to be the
    /// expected appid).
    pub appid: String,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("message", &format_args!("[{} bytes]", self.message.len()))
            .field("appid", &self.appid)
            .finish()
    }
}

/// The query parameters WeChat signs a callback with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedQuery<'a> {
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub msg_signature: &'a str,
}

/// The interesting parts of a POSTed encrypted envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Base64 ciphertext from `<Encrypt>`.
    pub encrypt: String,
    /// `<ToUserName>` (Official Accounts, WeCom), if present.
    pub to_user_name: Option<String>,
    /// `<AppId>` (third-party platform pushes), if present.
    pub app_id: Option<String>,
}

/// Which outer element names the receiver in a pushed envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient<'a> {
    /// `<ToUserName>` (Official Account / WeCom callbacks).
    ToUserName(&'a str),
    /// `<AppId>` (third-party platform pushes such as
    /// `component_verify_ticket`).
    AppId(&'a str),
}

/// A push as WeChat would send it: the POST body and the `msg_signature`
/// for the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub body: String,
    pub msg_signature: String,
}

/// Encrypts, decrypts and signs messages for one receiver.
pub struct MsgCrypt {
    token: SecretString,
    current: EncodingAesKey,
    previous: Option<EncodingAesKey>,
    appid: String,
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("token", &"[REDACTED]")
            .field("current", &self.current)
            .field("has_previous", &self.previous.is_some())
            .field("appid", &self.appid)
            .finish()
    }
}

type Enc = cbc::Encryptor<Aes256>;
type Dec = cbc::Decryptor<Aes256>;

impl MsgCrypt {
    /// `appid` is the expected receiver id inside every plaintext (the
    /// platform's appid, or a WeCom corp id / suite id).
    pub fn new(
        token: SecretString,
        current: EncodingAesKey,
        previous: Option<EncodingAesKey>,
        appid: impl Into<String>,
    ) -> Self {
        Self {
            token,
            current,
            previous,
            appid: appid.into(),
        }
    }

    /// The receiver id this instance encrypts for and expects.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// `msg_signature` over `[token, timestamp, nonce, encrypt]`.
    pub fn msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        sha1_sorted(&mut [self.token.expose_secret(), timestamp, nonce, encrypt])
    }

    /// The plain URL-verification `signature` over `[token, timestamp, nonce]`.
    pub fn signature(&self, timestamp: &str, nonce: &str) -> String {
        sha1_sorted(&mut [self.token.expose_secret(), timestamp, nonce])
    }

    /// Checks a `msg_signature` in constant time.
    pub fn verify_msg_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        msg_signature: &str,
    ) -> Result<(), CryptoError> {
        ct_hex_eq(
            &self.msg_signature(timestamp, nonce, encrypt),
            msg_signature,
        )
    }

    /// Checks a plain URL-verification `signature` in constant time.
    pub fn verify_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        signature: &str,
    ) -> Result<(), CryptoError> {
        ct_hex_eq(&self.signature(timestamp, nonce), signature)
    }

    /// Encrypts `msg` with the current key and a caller-chosen 16-byte random
    /// prefix (for reproducible tests); returns base64.
    pub fn encrypt_with_random(
        &self,
        msg: &str,
        random16: [u8; 16],
    ) -> Result<String, CryptoError> {
        let too_large = CryptoError::TooLarge {
            len: msg.len(),
            limit: u32::MAX as usize,
        };
        let msg_len = u32::try_from(msg.len()).map_err(|_| too_large)?;
        let body = RANDOM_LEN + LEN_PREFIX + msg.len() + self.appid.len();
        let pad = PAD_BLOCK - body % PAD_BLOCK; // 1..=32
        let mut buf = Vec::with_capacity(body + pad);
        buf.extend_from_slice(&random16);
        buf.extend_from_slice(&msg_len.to_be_bytes());
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(self.appid.as_bytes());
        // pad ≤ 32, so the cast cannot truncate.
        buf.resize(body + pad, pad as u8);
        let key = &self.current;
        let n = buf.len();
        let ct = Enc::new(key.bytes().into(), &key.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, n)
            .map_err(|_| CryptoError::BadCiphertextLength(n))?;
        Ok(STANDARD.encode(ct))
    }

    /// Encrypts `msg` with a fresh random prefix; returns base64.
    pub fn encrypt(&self, msg: &str) -> Result<String, CryptoError> {
        self.encrypt_with_random(msg, rand::random())
    }

    /// Decrypts a base64 `Encrypt` value, trying the current then the
    /// previous key, and checks the appid. Does not check any signature: use
    /// [`MsgCrypt::verify_and_decrypt`] for callbacks.
    ///
    /// If both keys fail, the error is the one from the current key.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<Decrypted, CryptoError> {
        let ct = STANDARD
            .decode(encrypt_b64.trim())
            .map_err(|_| CryptoError::BadBase64)?;
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(CryptoError::BadCiphertextLength(ct.len()));
        }
        match self.decrypt_with(&self.current, &ct) {
            Ok(d) => Ok(d),
            Err(first) => match &self.previous {
                Some(prev) => self.decrypt_with(prev, &ct).map_err(|_| first),
                None => Err(first),
            },
        }
    }

    fn decrypt_with(&self, key: &EncodingAesKey, ct: &[u8]) -> Result<Decrypted, CryptoError> {
        let mut buf = ct.to_vec();
        let plain = Dec::new(key.bytes().into(), &key.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::BadCiphertextLength(ct.len()))?;
        let plain = unpad32(plain)?;
        let (message, appid) = split_plaintext(plain)?;
        let message = std::str::from_utf8(message).map_err(|_| CryptoError::NotUtf8)?;
        let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::NotUtf8)?;
        if appid != self.appid {
            return Err(CryptoError::WrongAppId);
        }
        Ok(Decrypted {
            message: message.to_owned(),
            appid: appid.to_owned(),
        })
    }

    /// Verifies `msg_signature` over the envelope's `<Encrypt>` and decrypts
    /// it. The signature is checked before any decryption.
    pub fn verify_and_decrypt(
        &self,
        query: SignedQuery<'_>,
        body: &[u8],
    ) -> Result<Decrypted, CryptoError> {
        let env = parse_envelope(body)?;
        self.verify_and_decrypt_value(query, &env.encrypt)
    }

    /// Verifies `msg_signature` over a bare ciphertext (e.g. WeCom's
    /// `echostr` on URL verification) and decrypts it.
    pub fn verify_and_decrypt_value(
        &self,
        query: SignedQuery<'_>,
        encrypt_b64: &str,
    ) -> Result<Decrypted, CryptoError> {
        self.verify_msg_signature(
            query.timestamp,
            query.nonce,
            encrypt_b64,
            query.msg_signature,
        )?;
        self.decrypt(encrypt_b64)
    }

    /// Encrypts and signs `msg` into a reply envelope
    /// `<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`.
    pub fn seal(&self, msg: &str, timestamp: &str, nonce: &str) -> Result<String, CryptoError> {
        self.seal_with_random(msg, timestamp, nonce, rand::random())
    }

    /// [`MsgCrypt::seal`] with a caller-chosen random prefix.
    pub fn seal_with_random(
        &self,
        msg: &str,
        timestamp: &str,
        nonce: &str,
        random16: [u8; 16],
    ) -> Result<String, CryptoError> {
        check_param("timestamp", timestamp)?;
        check_param("nonce", nonce)?;
        let encrypt = self.encrypt_with_random(msg, random16)?;
        let sig = self.msg_signature(timestamp, nonce, &encrypt);
        Ok(format!(
            "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature><TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        ))
    }

    /// Builds a push as WeChat sends it (e.g. the simulator's
    /// `component_verify_ticket`): `<xml><AppId|ToUserName/><Encrypt/></xml>`
    /// and the `msg_signature` for the query string.
    pub fn push(
        &self,
        msg: &str,
        recipient: Recipient<'_>,
        timestamp: &str,
        nonce: &str,
    ) -> Result<Push, CryptoError> {
        self.push_with_random(msg, recipient, timestamp, nonce, rand::random())
    }

    /// [`MsgCrypt::push`] with a caller-chosen random prefix.
    pub fn push_with_random(
        &self,
        msg: &str,
        recipient: Recipient<'_>,
        timestamp: &str,
        nonce: &str,
        random16: [u8; 16],
    ) -> Result<Push, CryptoError> {
        check_param("timestamp", timestamp)?;
        check_param("nonce", nonce)?;
        let (tag, value) = match recipient {
            Recipient::ToUserName(v) => ("ToUserName", v),
            Recipient::AppId(v) => ("AppId", v),
        };
        if value.contains("]]>") {
            return Err(CryptoError::BadParameter("recipient"));
        }
        let encrypt = self.encrypt_with_random(msg, random16)?;
        let msg_signature = self.msg_signature(timestamp, nonce, &encrypt);
        Ok(Push {
            body: format!(
                "<xml><{tag}><![CDATA[{value}]]></{tag}><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            ),
            msg_signature,
        })
    }
}

fn check_param(what: &'static str, v: &str) -> Result<(), CryptoError> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CryptoError::BadParameter(what));
    }
    Ok(())
}

fn sha1_sorted(parts: &mut [&str]) -> String {
    parts.sort_unstable();
    let mut h = Sha1::new();
    for p in parts.iter() {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(40);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn ct_hex_eq(expected: &str, given: &str) -> Result<(), CryptoError> {
    let given = given.trim().to_ascii_lowercase();
    if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(CryptoError::BadSignature)
    }
}

/// Removes WeChat's PKCS#7 padding to a 32-byte block: the last byte `p` must
/// be in `1..=32` and the last `p` bytes must all equal `p`.
pub fn unpad32(data: &[u8]) -> Result<&[u8], CryptoError> {
    let Some(&last) = data.last() else {
        return Err(CryptoError::BadPadding);
    };
    let p = usize::from(last);
    if p == 0 || p > PAD_BLOCK || p > data.len() {
        return Err(CryptoError::BadPadding);
    }
    let (rest, pad) = data.split_at(data.len() - p);
    if pad.iter().any(|&b| b != last) {
        return Err(CryptoError::BadPadding);
    }
    Ok(rest)
}

/// Splits unpadded plaintext into `(message, appid)`.
fn split_plaintext(plain: &[u8]) -> Result<(&[u8], &[u8]), CryptoError> {
    let rest = plain.get(RANDOM_LEN..).ok_or(CryptoError::LengthMismatch)?;
    let (len, rest) = rest
        .split_first_chunk::<LEN_PREFIX>()
        .ok_or(CryptoError::LengthMismatch)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| CryptoError::LengthMismatch)?;
    if len > rest.len() {
        return Err(CryptoError::LengthMismatch);
    }
    Ok(rest.split_at(len))
}

/// Parses an encrypted POST body: root `<xml>`, its direct children
/// `<Encrypt>` (required), `<ToUserName>` and `<AppId>` (optional); other
/// elements are ignored. Bodies over [`MAX_BODY_LEN`], non-UTF-8 bodies,
/// DTDs and non-predefined entity references are rejected.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, CryptoError> {
    if body.len() > MAX_BODY_LEN {
        return Err(CryptoError::TooLarge {
            len: body.len(),
            limit: MAX_BODY_LEN,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| CryptoError::NotXml("not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;

    #[derive(Clone, Copy, PartialEq)]
    enum Field {
        Encrypt,
        ToUserName,
        AppId,
        Other,
    }
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut field: Option<Field> = None;
    let mut value = String::new();
    let mut encrypt = None;
    let mut to_user_name = None;
    let mut app_id = None;

    loop {
        let ev = reader
            .read_event()
            .map_err(|_| CryptoError::NotXml("malformed XML"))?;
        match ev {
            Event::DocType(_) => return Err(CryptoError::DtdOrEntity),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(e) => {
                if depth == 0 {
                    if seen_root {
                        return Err(CryptoError::NotXml("more than one root element"));
                    }
                    if e.name().as_ref() != b"xml" {
                        return Err(CryptoError::NotXml("root element is not <xml>"));
                    }
                    seen_root = true;
                } else if depth == 1 {
                    field = Some(match e.name().as_ref() {
                        b"Encrypt" => Field::Encrypt,
                        b"ToUserName" => Field::ToUserName,
                        b"AppId" => Field::AppId,
                        _ => Field::Other,
                    });
                    value.clear();
                }
                depth += 1;
            }
            Event::Empty(e) => {
                if depth == 0 {
                    return Err(CryptoError::NotXml("root element is empty"));
                }
                if depth == 1 && e.name().as_ref() == b"Encrypt" {
                    return Err(CryptoError::MissingEncrypt);
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    let slot = match field.take() {
                        Some(Field::Encrypt) => Some(&mut encrypt),
                        Some(Field::ToUserName) => Some(&mut to_user_name),
                        Some(Field::AppId) => Some(&mut app_id),
                        _ => None,
                    };
                    if let Some(slot) = slot {
                        if slot.is_some() {
                            return Err(CryptoError::NotXml("duplicate element"));
                        }
                        *slot = Some(value.trim().to_owned());
                    }
                }
            }
            Event::Text(t) => {
                if depth == 0 {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(CryptoError::NotXml("text outside the root element"));
                    }
                } else if depth == 2 && field.is_some() {
                    let s = t.decode().map_err(|_| CryptoError::NotXml("bad text"))?;
                    value.push_str(&s);
                }
            }
            Event::CData(c) => {
                if depth == 2 && field.is_some() {
                    let s = c.decode().map_err(|_| CryptoError::NotXml("bad CDATA"))?;
                    value.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten().map(|c| c.to_string())
                } else {
                    std::str::from_utf8(&r)
                        .ok()
                        .and_then(quick_xml::escape::resolve_predefined_entity)
                        .map(str::to_owned)
                };
                let Some(resolved) = resolved else {
                    return Err(CryptoError::DtdOrEntity);
                };
                if depth == 2 && field.is_some() {
                    value.push_str(&resolved);
                }
            }
            Event::Eof => break,
        }
    }
    if !seen_root || depth != 0 {
        return Err(CryptoError::NotXml("unterminated document"));
    }
    let encrypt = encrypt
        .filter(|e| !e.is_empty())
        .ok_or(CryptoError::MissingEncrypt)?;
    Ok(Envelope {
        encrypt,
        to_user_name,
        app_id,
    })
}
