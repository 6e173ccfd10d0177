//! Lower-case hex, the form of every fingerprint, checksum and tag the
//! state writes. One function, by table: `format!("{:02x}")` per byte was a
//! measurable share of apply's CPU (a fingerprint is formatted for every
//! request looked up, several times per row).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub fn lower(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_become_two_digits_each() {
        let cases: [(&[u8], &str); 4] = [
            (&[], ""),
            (&[0], "00"),
            (&[0x0f, 0xf0, 0xab], "0ff0ab"),
            (&[0xff, 0x01, 0x10, 0x9a], "ff01109a"),
        ];
        for (bytes, want) in cases {
            assert_eq!(super::lower(bytes), want);
            let slow: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(super::lower(bytes), slow);
        }
    }
}
