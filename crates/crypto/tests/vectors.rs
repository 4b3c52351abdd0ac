//! Tests against WeChat's published sample vectors, plus the error paths.
//!
//! Where the vectors come from:
//!
//! * **A** — Tencent's official Java sample `WXBizMsgCryptTest`
//!   (`testAesEncrypt` / `testAesEncrypt2`: token `pamtest`, EncodingAESKey
//!   `abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG`, appid
//!   `wxb11529c136998cb6`, randomStr `aaaabbbbccccdddd`), as vendored e.g. in
//!   `Wyl015/wuyiling` `work-test/src/main/resources/Utils/aes/WXBizMsgCryptTest.java`
//!   and WxJava's `WxCryptUtilTest` (same constants).
//! * **C** — Tencent's official Python sample `Sample.py` (token `spamtest`,
//!   same EncodingAESKey, appid `wx2c2769f8efd9abc2`, timestamp
//!   `1409735669`, nonce `1320562132`, msg_sign
//!   `5d197aaffba7e9b25a30732f161a50dee96bd5fa`), as vendored in
//!   `charlesXu86/Chatbot_CN` `Chatbot_Web/impl/weixin/Sample.py`.
//! * **V** — Tencent's WeCom sample URL verification (`testVerifyUrl`: token
//!   `QDG6eK`, corp id `wx5823bf96d3bd56c7`, msg_signature
//!   `5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3`), found in the official
//!   Java/C#/Python sample code and its README (`GET
//!   /cgi-bin/wxpush?msg_signature=…`).
//! * **W** — `wechatpy/wechatpy` `tests/test_crypto.py` (WeCom: token
//!   `123456`, corp id `wx49f0ab532d5d035a`; a fixed-random encryption with
//!   its MsgSignature, a decryption and an echostr check).

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use secrecy::SecretString;
use wxtoken_crypto::{
    parse_envelope, unpad32, CryptoError, EncodingAesKey, MsgCrypt, Recipient, SignedQuery,
    MAX_BODY_LEN,
};

const KEY_A: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TOKEN_A: &str = "pamtest";
const APPID_A: &str = "wxb11529c136998cb6";
const RANDOM_A: &[u8; 16] = b"aaaabbbbccccdddd";
const TIMESTAMP_A: &str = "1409304348";
const NONCE_A: &str = "xxxxxx";
const REPLY_A1: &str = "我是中文abcd123";
const CIPHER_A1: &str =
    "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";
const REPLY_A2: &str = "<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>";
const CIPHER_A2: &str = "jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb";

const TOKEN_C: &str = "spamtest";
const APPID_C: &str = "wx2c2769f8efd9abc2";
const TIMESTAMP_C: &str = "1409735669";
const NONCE_C: &str = "1320562132";
const MSG_SIGN_C: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";
const BODY_C: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName><CreateTime>1409735668</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[abcdteT]]></Content><MsgId>6054768590064713728</MsgId><Encrypt><![CDATA[hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=]]></Encrypt></xml>";
const PLAIN_C: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>";

const TOKEN_W: &str = "123456";
const KEY_W: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const CORP_W: &str = "wx49f0ab532d5d035a";

fn crypt(token: &str, key: &str, appid: &str) -> MsgCrypt {
    MsgCrypt::new(
        SecretString::from(token),
        EncodingAesKey::parse(key).expect("sample key parses"),
        None,
        appid,
    )
}

fn key_bytes(key: &str) -> [u8; 32] {
    // Test-side reference decoding (lenient about the 2 spare bits).
    let cfg = base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true);
    let eng = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, cfg);
    let v = eng.decode(format!("{key}=")).expect("key");
    v.try_into().expect("32 bytes")
}

/// Raw AES-256-CBC (no padding) with WeChat's key/IV, for crafting plaintexts.
fn raw_encrypt(key: &str, plain: &[u8]) -> String {
    let k = key_bytes(key);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&k[..16]);
    let mut buf = plain.to_vec();
    let n = buf.len();
    let ct = cbc::Encryptor::<Aes256>::new(&k.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, n)
        .expect("block multiple");
    STANDARD.encode(ct)
}

fn raw_decrypt(key: &str, b64: &str) -> Vec<u8> {
    let k = key_bytes(key);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&k[..16]);
    let mut buf = STANDARD.decode(b64).expect("b64");
    cbc::Decryptor::<Aes256>::new(&k.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .expect("block multiple")
        .to_vec()
}

fn plaintext(msg: &[u8], declared_len: u32, appid: &str) -> Vec<u8> {
    let mut v = b"0123456789abcdef".to_vec();
    v.extend_from_slice(&declared_len.to_be_bytes());
    v.extend_from_slice(msg);
    v.extend_from_slice(appid.as_bytes());
    v
}

// ---- (1)/(3) published ciphertexts ------------------------------------------

#[test]
fn vector_a_encrypts_to_published_ciphertext() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    assert_eq!(
        c.encrypt_with_random(REPLY_A1, *RANDOM_A).unwrap(),
        CIPHER_A1
    );
    assert_eq!(
        c.encrypt_with_random(REPLY_A2, *RANDOM_A).unwrap(),
        CIPHER_A2
    );
}

#[test]
fn vector_a_decrypts_to_published_plaintext() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let d = c.decrypt(CIPHER_A1).unwrap();
    assert_eq!(d.message, REPLY_A1);
    assert_eq!(d.appid, APPID_A);
    assert_eq!(c.decrypt(CIPHER_A2).unwrap().message, REPLY_A2);
}

#[test]
fn vector_a_seal_round_trips_through_verify_and_decrypt() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let reply = c
        .seal_with_random(REPLY_A1, TIMESTAMP_A, NONCE_A, *RANDOM_A)
        .unwrap();
    let sig = c.msg_signature(TIMESTAMP_A, NONCE_A, CIPHER_A1);
    assert_eq!(
        reply,
        format!(
            "<xml><Encrypt><![CDATA[{CIPHER_A1}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature><TimeStamp>{TIMESTAMP_A}</TimeStamp><Nonce><![CDATA[{NONCE_A}]]></Nonce></xml>"
        )
    );
    // The Java sample's incoming format (ToUserName + Encrypt).
    let body = format!(
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><Encrypt><![CDATA[{CIPHER_A1}]]></Encrypt></xml>"
    );
    let q = SignedQuery {
        timestamp: TIMESTAMP_A,
        nonce: NONCE_A,
        msg_signature: &sig,
    };
    assert_eq!(
        c.verify_and_decrypt(q, body.as_bytes()).unwrap().message,
        REPLY_A1
    );
}

// ---- (2) published signatures -----------------------------------------------

#[test]
fn vector_c_signature_and_decryption() {
    let c = crypt(TOKEN_C, KEY_A, APPID_C);
    let env = parse_envelope(BODY_C.as_bytes()).unwrap();
    assert_eq!(env.to_user_name.as_deref(), Some("gh_10f6c3c3ac5a"));
    assert_eq!(env.app_id, None);
    assert_eq!(
        c.msg_signature(TIMESTAMP_C, NONCE_C, &env.encrypt),
        MSG_SIGN_C
    );
    let q = SignedQuery {
        timestamp: TIMESTAMP_C,
        nonce: NONCE_C,
        msg_signature: MSG_SIGN_C,
    };
    let d = c.verify_and_decrypt(q, BODY_C.as_bytes()).unwrap();
    assert_eq!(d.message, PLAIN_C);
    assert_eq!(d.appid, APPID_C);
}

#[test]
fn vector_v_wecom_url_verification() {
    let c = crypt(
        "QDG6eK",
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "wx5823bf96d3bd56c7",
    );
    let echostr =
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
    let q = SignedQuery {
        timestamp: "1409659589",
        nonce: "263014780",
        msg_signature: "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    };
    let d = c.verify_and_decrypt_value(q, echostr).unwrap();
    assert_eq!(d.message, "1616140317555161061");
}

#[test]
fn vector_w_wechatpy_encrypt_with_fixed_random() {
    let c = crypt(TOKEN_W, KEY_W, CORP_W);
    let reply = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
    let expected = "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3";
    let enc = c.encrypt_with_random(reply, *b"1234567890123456").unwrap();
    assert_eq!(enc, expected);
    assert_eq!(
        c.msg_signature("1411525903", "461056294", &enc),
        "407518b7649e86ef23978113f92d27afa9296533"
    );
    assert_eq!(c.decrypt(&enc).unwrap().message, reply);
}

#[test]
fn vector_w_wechatpy_decrypt_and_echostr() {
    let c = crypt(TOKEN_W, KEY_W, CORP_W);
    let body = "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<Encrypt><![CDATA[RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=]]></Encrypt>\n<AgentID><![CDATA[1]]></AgentID>\n</xml>";
    let q = SignedQuery {
        timestamp: "1411525903",
        nonce: "461056294",
        msg_signature: "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
    };
    let d = c.verify_and_decrypt(q, body.as_bytes()).unwrap();
    assert!(d.message.contains("<Content><![CDATA[test]]></Content>"));
    assert!(d
        .message
        .contains("<FromUserName><![CDATA[messense]]></FromUserName>"));
    assert_eq!(d.appid, CORP_W);

    let echo =
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
    let ok = SignedQuery {
        timestamp: "1411443780",
        nonce: "437374425",
        msg_signature: "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
    };
    assert!(c.verify_and_decrypt_value(ok, echo).is_ok());
    // wechatpy's failing case: same signature, nonce off by one.
    let bad = SignedQuery {
        nonce: "437374424",
        ..ok
    };
    assert_eq!(
        c.verify_and_decrypt_value(bad, echo),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn plain_url_signature_is_sha1_of_sorted_triple() {
    use sha1::{Digest, Sha1};
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let mut parts = [TOKEN_A, TIMESTAMP_A, NONCE_A];
    parts.sort();
    let want: String = Sha1::digest(parts.concat().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(c.signature(TIMESTAMP_A, NONCE_A), want);
    assert!(c.verify_signature(TIMESTAMP_A, NONCE_A, &want).is_ok());
    assert!(c
        .verify_signature(TIMESTAMP_A, NONCE_A, &want.to_uppercase())
        .is_ok());
    assert_eq!(
        c.verify_signature(TIMESTAMP_A, "yyyyyy", &want),
        Err(CryptoError::BadSignature)
    );
}

// ---- (4) a full 32-byte pad block -------------------------------------------

#[test]
fn pad_of_exactly_32_round_trips_and_needs_32_byte_unpadding() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    // 16 + 4 + len + 18 (appid) ≡ 0 (mod 32)  ⇒  len = 26.
    let msg = "<xml>twenty-six bytes</xml>";
    let msg = &msg[..26];
    assert_eq!((16 + 4 + msg.len() + APPID_A.len()) % 32, 0);
    let enc = c.encrypt_with_random(msg, *RANDOM_A).unwrap();
    let raw = raw_decrypt(KEY_A, &enc);
    assert_eq!(raw.len(), 16 + 4 + 26 + 18 + 32);
    assert_eq!(raw.last(), Some(&32), "the pad byte is 32");
    assert!(raw[raw.len() - 32..].iter().all(|&b| b == 32));

    // A standard 16-byte-block PKCS#7 unpadder rejects this valid message.
    let k = key_bytes(KEY_A);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&k[..16]);
    let mut buf = STANDARD.decode(&enc).unwrap();
    let std_unpad =
        cbc::Decryptor::<Aes256>::new(&k.into(), &iv.into()).decrypt_padded_mut::<Pkcs7>(&mut buf);
    assert!(std_unpad.is_err(), "a 16-byte unpadder must reject pad 32");

    let d = c.decrypt(&enc).unwrap();
    assert_eq!(d.message, msg);
}

#[test]
fn every_pad_length_round_trips() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..64 {
        let msg = "x".repeat(n);
        let enc = c.encrypt_with_random(&msg, *RANDOM_A).unwrap();
        seen.insert(*raw_decrypt(KEY_A, &enc).last().unwrap());
        assert_eq!(c.decrypt(&enc).unwrap().message, msg);
    }
    assert_eq!(seen, (1..=32).collect());
}

#[test]
fn unpad32_rules() {
    assert_eq!(unpad32(&[7u8; 32]).unwrap(), &[7u8; 25][..]);
    assert_eq!(unpad32(&[32u8; 32]).unwrap(), &[] as &[u8]);
    assert_eq!(unpad32(&[0u8; 32]), Err(CryptoError::BadPadding));
    assert_eq!(unpad32(&[33u8; 64]), Err(CryptoError::BadPadding));
    assert_eq!(unpad32(&[]), Err(CryptoError::BadPadding));
    let mut v = vec![3u8; 32];
    v[30] = 4;
    assert_eq!(unpad32(&v), Err(CryptoError::BadPadding));
}

// ---- (5) errors ---------------------------------------------------------------

#[test]
fn forged_signature_is_rejected_before_decryption() {
    let c = crypt(TOKEN_C, KEY_A, APPID_C);
    for sig in [
        "5d197aaffba7e9b25a30732f161a50dee96bd5fb",
        "12345",
        "",
        "5d197aaffba7e9b25a30732f161a50dee96bd5fa00",
    ] {
        let q = SignedQuery {
            timestamp: TIMESTAMP_C,
            nonce: NONCE_C,
            msg_signature: sig,
        };
        assert_eq!(
            c.verify_and_decrypt(q, BODY_C.as_bytes()),
            Err(CryptoError::BadSignature)
        );
    }
    // Right signature, wrong token.
    let other = crypt("not-the-token", KEY_A, APPID_C);
    let q = SignedQuery {
        timestamp: TIMESTAMP_C,
        nonce: NONCE_C,
        msg_signature: MSG_SIGN_C,
    };
    assert_eq!(
        other.verify_and_decrypt(q, BODY_C.as_bytes()),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn truncated_and_garbled_ciphertexts() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let ct = STANDARD.decode(CIPHER_A2).unwrap();
    // Truncated to a non-block length.
    let trunc = STANDARD.encode(&ct[..ct.len() - 5]);
    assert_eq!(
        c.decrypt(&trunc),
        Err(CryptoError::BadCiphertextLength(ct.len() - 5))
    );
    // Truncated by whole blocks: the padding/length no longer line up.
    let trunc = STANDARD.encode(&ct[..ct.len() - 16]);
    assert!(c.decrypt(&trunc).is_err());
    // Empty.
    assert_eq!(c.decrypt(""), Err(CryptoError::BadCiphertextLength(0)));
    // Flip the last byte of the penultimate block: CBC flips the pad byte.
    let mut g = ct.clone();
    let i = g.len() - 17;
    g[i] ^= 0x01;
    assert_eq!(
        c.decrypt(&STANDARD.encode(&g)),
        Err(CryptoError::BadPadding)
    );
    // Garbage of every block length up to 8 blocks: never panics, never Ok.
    for n in 1..=8 {
        let junk = STANDARD.encode(vec![0xA5u8; 16 * n]);
        assert!(c.decrypt(&junk).is_err());
    }
}

#[test]
fn non_base64_is_rejected() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    for s in ["!!!not-base64!!!", "jn1L23DB+6E", "Zm9v=YmFy", "🦀"] {
        assert_eq!(c.decrypt(s), Err(CryptoError::BadBase64), "{s}");
    }
}

#[test]
fn wrong_appid_in_plaintext_is_rejected() {
    let sender = crypt(TOKEN_A, KEY_A, "wx_someone_else");
    let receiver = crypt(TOKEN_A, KEY_A, APPID_A);
    let enc = sender.encrypt("<xml/>").unwrap();
    assert_eq!(receiver.decrypt(&enc), Err(CryptoError::WrongAppId));
    // A prefix of the right appid is not the right appid either.
    let sender = crypt(TOKEN_A, KEY_A, &APPID_A[..10]);
    let enc = sender.encrypt("<xml/>").unwrap();
    assert_eq!(receiver.decrypt(&enc), Err(CryptoError::WrongAppId));
}

#[test]
fn crafted_bad_pad_bytes_and_lengths() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let msg = b"<xml/>";
    let base = plaintext(msg, msg.len() as u32, APPID_A); // 44 bytes
    let pad_to = |mut v: Vec<u8>, fill: &dyn Fn(usize, usize) -> u8| {
        let pad = 32 - v.len() % 32;
        let start = v.len();
        for i in 0..pad {
            v.push(fill(i, pad));
        }
        assert_eq!(v.len() - start, pad);
        v
    };
    // Correct padding decrypts.
    let good = pad_to(base.clone(), &|_, p| p as u8);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &good)).unwrap().message,
        "<xml/>"
    );
    // Inconsistent pad bytes.
    let bad = pad_to(base.clone(), &|i, p| if i == 0 { 1 } else { p as u8 });
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &bad)),
        Err(CryptoError::BadPadding)
    );
    // Pad value 0.
    let zero = pad_to(base.clone(), &|_, _| 0);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &zero)),
        Err(CryptoError::BadPadding)
    );
    // Pad value 33 (> 32) with 64 bytes of it.
    let mut big = base.clone();
    let pad = 32 - big.len() % 32;
    big.resize(big.len() + pad + 32, 33);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &big)),
        Err(CryptoError::BadPadding)
    );
    // Length prefix larger than the data.
    let long = pad_to(plaintext(msg, 10_000, APPID_A), &|_, p| p as u8);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &long)),
        Err(CryptoError::LengthMismatch)
    );
    let huge = pad_to(plaintext(msg, u32::MAX, APPID_A), &|_, p| p as u8);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &huge)),
        Err(CryptoError::LengthMismatch)
    );
    // Plaintext too short to hold the random prefix and length.
    let short = pad_to(b"0123456789".to_vec(), &|_, p| p as u8);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &short)),
        Err(CryptoError::LengthMismatch)
    );
    // Message not UTF-8.
    let bin = pad_to(plaintext(&[0xff, 0xfe], 2, APPID_A), &|_, p| p as u8);
    assert_eq!(
        c.decrypt(&raw_encrypt(KEY_A, &bin)),
        Err(CryptoError::NotUtf8)
    );
}

#[test]
fn oversized_body_is_rejected() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let mut body = b"<xml><Encrypt>".to_vec();
    body.resize(MAX_BODY_LEN + 1, b'A');
    let q = SignedQuery {
        timestamp: TIMESTAMP_A,
        nonce: NONCE_A,
        msg_signature: "x",
    };
    assert_eq!(
        c.verify_and_decrypt(q, &body),
        Err(CryptoError::TooLarge {
            len: MAX_BODY_LEN + 1,
            limit: MAX_BODY_LEN
        })
    );
}

#[test]
fn dtds_and_entities_are_rejected() {
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>"#;
    assert_eq!(
        parse_envelope(xxe.as_bytes()),
        Err(CryptoError::DtdOrEntity)
    );
    let bomb = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><Encrypt>&lol2;</Encrypt></xml>"#;
    assert_eq!(
        parse_envelope(bomb.as_bytes()),
        Err(CryptoError::DtdOrEntity)
    );
    // An undeclared custom entity, without any DTD.
    let custom = "<xml><Encrypt>abc&custom;</Encrypt></xml>";
    assert_eq!(
        parse_envelope(custom.as_bytes()),
        Err(CryptoError::DtdOrEntity)
    );
    // Predefined and character references are plain XML and resolve.
    let ok = "<xml><AppId>wx&#65;&amp;b</AppId><Encrypt>ab&#x2B;c</Encrypt></xml>";
    let env = parse_envelope(ok.as_bytes()).unwrap();
    assert_eq!(env.encrypt, "ab+c");
    assert_eq!(env.app_id.as_deref(), Some("wxA&b"));
}

#[test]
fn garbage_bodies_are_errors_not_panics() {
    let cases: &[&[u8]] = &[
        b"",
        b"   ",
        b"not xml at all",
        b"<xml>",
        b"<xml><Encrypt>abc</Encrypt>",
        b"<xml><Encrypt>abc</Wrong></xml>",
        b"<xml></xml>",
        b"<xml/>",
        b"<xml><Encrypt/></xml>",
        b"<xml><Encrypt>  </Encrypt></xml>",
        b"<other><Encrypt>abc</Encrypt></other>",
        b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>",
        b"<xml><Encrypt>abc</Encrypt></xml><xml/>",
        b"<xml><Encrypt>abc</Encrypt></xml>trailing",
        b"\xff\xfe<\x00x\x00",
        b"<xml><Encrypt><![CDATA[abc</Encrypt></xml>",
        b"<<<>>>&&&",
    ];
    for body in cases {
        let r = parse_envelope(body);
        assert!(
            r.is_err(),
            "{:?} parsed: {r:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Deep nesting is bounded by the size limit and is not recursive.
    let deep = format!(
        "<xml><Encrypt>abc</Encrypt>{}{}</xml>",
        "<a>".repeat(5_000),
        "</a>".repeat(5_000)
    );
    assert_eq!(parse_envelope(deep.as_bytes()).unwrap().encrypt, "abc");
}

#[test]
fn third_party_push_envelope_round_trips() {
    let c = crypt(TOKEN_A, KEY_A, APPID_A);
    let ticket = "<xml><AppId><![CDATA[wxb11529c136998cb6]]></AppId><CreateTime>1413192605</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[ticket@@@xyz]]></ComponentVerifyTicket></xml>";
    let push = c
        .push(ticket, Recipient::AppId(APPID_A), "1413192605", "1234567")
        .unwrap();
    let env = parse_envelope(push.body.as_bytes()).unwrap();
    assert_eq!(env.app_id.as_deref(), Some(APPID_A));
    assert_eq!(env.to_user_name, None);
    let q = SignedQuery {
        timestamp: "1413192605",
        nonce: "1234567",
        msg_signature: &push.msg_signature,
    };
    let d = c.verify_and_decrypt(q, push.body.as_bytes()).unwrap();
    assert_eq!(d.message, ticket);

    // Sealed replies parse back too (Encrypt is the only required element).
    let sealed = c.seal("<xml>hi</xml>", "1413192605", "1234567").unwrap();
    let env = parse_envelope(sealed.as_bytes()).unwrap();
    assert_eq!(c.decrypt(&env.encrypt).unwrap().message, "<xml>hi</xml>");

    // Parameters that would break the XML are refused.
    assert!(matches!(
        c.seal("m", "1]]><x>", "n"),
        Err(CryptoError::BadParameter("timestamp"))
    ));
    assert!(matches!(
        c.push("m", Recipient::ToUserName("a]]>b"), "1", "2"),
        Err(CryptoError::BadParameter("recipient"))
    ));
}

// ---- (6) key rotation ---------------------------------------------------------

#[test]
fn previous_key_still_decrypts_after_rotation() {
    const NEW_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    let old = crypt(TOKEN_A, KEY_A, APPID_A);
    let enc_old = old.encrypt("<xml>old</xml>").unwrap();

    let rotated = MsgCrypt::new(
        SecretString::from(TOKEN_A),
        EncodingAesKey::parse(NEW_KEY).unwrap(),
        Some(EncodingAesKey::parse(KEY_A).unwrap()),
        APPID_A,
    );
    assert_eq!(rotated.decrypt(&enc_old).unwrap().message, "<xml>old</xml>");
    // The published vector, encrypted with the (now previous) sample key.
    assert_eq!(rotated.decrypt(CIPHER_A1).unwrap().message, REPLY_A1);
    // New messages use the current key: the old-only instance can't read them.
    let enc_new = rotated.encrypt("<xml>new</xml>").unwrap();
    assert_eq!(rotated.decrypt(&enc_new).unwrap().message, "<xml>new</xml>");
    assert!(old.decrypt(&enc_new).is_err());
    // Without the previous key, the old message is rejected.
    let new_only = crypt(TOKEN_A, NEW_KEY, APPID_A);
    assert!(new_only.decrypt(&enc_old).is_err());
}

// ---- keys and redaction -------------------------------------------------------

#[test]
fn key_parsing_and_redaction() {
    assert_eq!(
        EncodingAesKey::parse("abcde").unwrap_err(),
        CryptoError::InvalidKey("must be 43 characters")
    );
    let bad = format!("{}!", &KEY_A[..42]);
    let err = EncodingAesKey::parse(&bad).unwrap_err();
    assert!(matches!(err, CryptoError::InvalidKey(_)));
    assert!(!err.to_string().contains(&KEY_A[..10]));
    // 44 characters (someone pasted the padded form) is refused.
    assert!(EncodingAesKey::parse(&format!("{KEY_A}=")).is_err());

    let key = EncodingAesKey::parse(KEY_A).unwrap();
    assert!(!format!("{key:?}").contains("abc"));
    let c = MsgCrypt::new(SecretString::from(TOKEN_A), key, None, APPID_A);
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(TOKEN_A) && !dbg.contains("abcdefgh"), "{dbg}");

    let d = c.decrypt(CIPHER_A1).unwrap();
    assert!(!format!("{d:?}").contains("abcd123"));
}
