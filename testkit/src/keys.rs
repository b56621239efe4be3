//! Gossip encryption keys for tests: random keys of any length in the
//! standard base64 form Serf's `-encrypt` and keyring files take.

/// Standard base64 (with padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let at = |i: usize| chunk.get(i).copied().unwrap_or(0);
        let n = u32::from_be_bytes([0, at(0), at(1), at(2)]);
        let sextets =
            [n >> 18, n >> 12, n >> 6, n].map(|s| char::from(ALPHABET[(s & 63) as usize]));
        // A chunk of k bytes carries k + 1 sextets; '=' pads to four.
        let carried = chunk.len() + 1;
        out.extend(&sextets[..carried]);
        out.extend(std::iter::repeat_n('=', 4 - carried));
    }
    out
}

/// A fresh random key of `len` bytes (from /dev/urandom), in base64.
pub fn random_key(len: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    base64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_padded_form() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff; 3]), "////");
        assert_eq!(random_key(32).len(), 44);
    }
}
