//! The few fields of an X.509 certificate the gateway reports: its serial number and its
//! validity (`notBefore`, `notAfter`), read from the DER by a minimal walk.
//!
//! Why not a parser crate: the gateway needs three fields at fixed places in
//! `TBSCertificate` (RFC 5280 §4.1), to refuse an expired certificate and export its expiry as a
//! metric. rustls does not expose them, and `x509-parser` would bring `nom`, `asn1-rs`,
//! `der-parser` and friends for it. The walk below reads tag-length-value headers only, never
//! allocates past the input, and cannot panic on any input (see the proptest); anything it does
//! not expect is an [`X509Error`].

use thiserror::Error;

/// What a certificate says about itself that the gateway reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The serial number's bytes, as encoded (big-endian, with any leading zero byte).
    pub serial: Vec<u8>,
    /// `notBefore`, in seconds since the Unix epoch.
    pub not_before: i64,
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl Leaf {
    /// The serial number in lowercase hex, leading zero bytes dropped (as `openssl` prints it,
    /// without colons).
    pub fn serial_hex(&self) -> String {
        let bytes = match self.serial.iter().position(|b| *b != 0) {
            Some(first) => &self.serial[first..],
            None => &self.serial[self.serial.len().saturating_sub(1)..],
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why the certificate's fields could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum X509Error {
    /// The DER ends inside a field.
    #[error("certificate DER is truncated")]
    Truncated,
    /// A field has another type than RFC 5280 puts there.
    #[error("certificate DER: expected {expected} at byte {at}")]
    Unexpected {
        /// What should be there.
        expected: &'static str,
        /// Where.
        at: usize,
    },
    /// A length that DER does not allow (indefinite, or more than four bytes long).
    #[error("certificate DER: unsupported length encoding")]
    Length,
    /// A time that is not `YYMMDDHHMMSSZ` / `YYYYMMDDHHMMSSZ`.
    #[error("certificate DER: bad time {0:?}")]
    Time(String),
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One tag-length-value: its tag, its value, and where it began in the whole input.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    at: usize,
}

/// A cursor over DER, `offset` bytes into the whole certificate.
struct Reader<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8], offset: usize) -> Self {
        Reader { rest, offset }
    }

    /// The next TLV (single-byte tags only, which is all RFC 5280 uses up to the validity).
    fn next(&mut self) -> Result<Tlv<'a>, X509Error> {
        let at = self.offset;
        let (&tag, rest) = self.rest.split_first().ok_or(X509Error::Truncated)?;
        let (&first, mut rest) = rest.split_first().ok_or(X509Error::Truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(X509Error::Length);
            }
            if rest.len() < n {
                return Err(X509Error::Truncated);
            }
            let (digits, after) = rest.split_at(n);
            rest = after;
            digits
                .iter()
                .fold(0usize, |len, d| (len << 8) | usize::from(*d))
        };
        if rest.len() < len {
            return Err(X509Error::Truncated);
        }
        let (value, after) = rest.split_at(len);
        let header = self.rest.len() - rest.len();
        self.offset += header + len;
        self.rest = after;
        Ok(Tlv {
            tag,
            value,
            at: at + header,
        })
    }

    /// The next TLV, which must have `tag`.
    fn expect(&mut self, tag: u8, expected: &'static str) -> Result<Tlv<'a>, X509Error> {
        let at = self.offset;
        let tlv = self.next()?;
        if tlv.tag == tag {
            Ok(tlv)
        } else {
            Err(X509Error::Unexpected { expected, at })
        }
    }
}

/// Reads the serial number and validity of the DER certificate `der`.
pub fn leaf(der: &[u8]) -> Result<Leaf, X509Error> {
    let cert = Reader::new(der, 0).expect(SEQUENCE, "Certificate SEQUENCE")?;
    let tbs = Reader::new(cert.value, cert.at).expect(SEQUENCE, "TBSCertificate SEQUENCE")?;
    let mut fields = Reader::new(tbs.value, tbs.at);
    let mut serial = fields.next()?;
    if serial.tag == VERSION {
        serial = fields.next()?;
    }
    if serial.tag != INTEGER {
        return Err(X509Error::Unexpected {
            expected: "serialNumber INTEGER",
            at: serial.at,
        });
    }
    fields.expect(SEQUENCE, "signature AlgorithmIdentifier")?;
    fields.expect(SEQUENCE, "issuer Name")?;
    let validity = fields.expect(SEQUENCE, "Validity SEQUENCE")?;
    let mut times = Reader::new(validity.value, validity.at);
    let not_before = time(&times.next()?)?;
    let not_after = time(&times.next()?)?;
    Ok(Leaf {
        serial: serial.value.to_vec(),
        not_before,
        not_after,
    })
}

/// A UTCTime or GeneralizedTime (RFC 5280's forms: UTC, seconds, no fraction) as Unix seconds.
fn time(tlv: &Tlv<'_>) -> Result<i64, X509Error> {
    let bad = || X509Error::Time(String::from_utf8_lossy(tlv.value).into_owned());
    let text = std::str::from_utf8(tlv.value).map_err(|_| bad())?;
    let digits = text.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (year, rest) = match (tlv.tag, digits.len()) {
        (UTC_TIME, 12) => {
            // RFC 5280 §4.1.2.5.1: YY >= 50 is 19YY, else 20YY.
            let yy = num(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&digits[..4])?, &digits[4..]),
        (UTC_TIME | GENERALIZED_TIME, _) => return Err(bad()),
        _ => {
            return Err(X509Error::Unexpected {
                expected: "UTCTime or GeneralizedTime",
                at: tlv.at,
            })
        }
    };
    let (month, day) = (num(&rest[0..2])?, num(&rest[2..4])?);
    let (hour, minute, second) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d` (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A DER TLV with a definite length.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if value.len() < 0x80 {
            out.push(value.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    /// A certificate skeleton with `times` as its Validity, padded past 128 bytes so long
    /// lengths are exercised.
    fn cert(version: bool, serial: &[u8], times: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(tlv(VERSION, &tlv(INTEGER, &[2])));
        }
        tbs.extend(tlv(INTEGER, serial));
        tbs.extend(tlv(SEQUENCE, &tlv(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(tlv(SEQUENCE, &[0x31; 150]));
        tbs.extend(tlv(SEQUENCE, times));
        tbs.extend(tlv(SEQUENCE, b"subject and the rest"));
        let mut whole = tlv(SEQUENCE, &tbs);
        whole.extend(tlv(SEQUENCE, b"sig alg"));
        tlv(SEQUENCE, &whole)
    }

    #[test]
    fn utc_and_generalized_times_are_read() {
        let mut times = tlv(UTC_TIME, b"240229120000Z");
        times.extend(tlv(GENERALIZED_TIME, b"20500101000000Z"));
        let got = leaf(&cert(true, &[0x00, 0x9f, 0x01], &times)).unwrap();
        assert_eq!(got.not_before, 1_709_208_000); // 2024-02-29T12:00:00Z
        assert_eq!(got.not_after, 2_524_608_000); // 2050-01-01T00:00:00Z
        assert_eq!(got.serial_hex(), "9f01");
        let mut times = tlv(UTC_TIME, b"700101000000Z");
        times.extend(tlv(UTC_TIME, b"491231235959Z"));
        let got = leaf(&cert(false, &[0], &times)).unwrap();
        assert_eq!(got.not_before, 0);
        assert_eq!(got.not_after, 2_524_607_999); // 2049-12-31T23:59:59Z
        assert_eq!(got.serial_hex(), "00");
    }

    #[test]
    fn malformed_certificates_are_errors() {
        assert_eq!(leaf(&[]), Err(X509Error::Truncated));
        assert_eq!(leaf(&[0x30, 0x80]), Err(X509Error::Length));
        assert!(matches!(
            leaf(&tlv(INTEGER, &[1])),
            Err(X509Error::Unexpected { .. })
        ));
        let mut times = tlv(UTC_TIME, b"241301000000Z");
        times.extend(tlv(UTC_TIME, b"250101000000Z"));
        assert!(matches!(
            leaf(&cert(true, &[1], &times)),
            Err(X509Error::Time(_))
        ));
        let good = cert(true, &[1], &{
            let mut t = tlv(UTC_TIME, b"240101000000Z");
            t.extend(tlv(UTC_TIME, b"250101000000Z"));
            t
        });
        for cut in 0..good.len() {
            assert!(leaf(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = leaf(&bytes);
        }

        #[test]
        fn never_panics_on_damaged_certificates(at in 0usize..300, byte in any::<u8>()) {
            let mut t = tlv(UTC_TIME, b"240101000000Z");
            t.extend(tlv(GENERALIZED_TIME, b"20250101000000Z"));
            let mut c = cert(true, &[1, 2], &t);
            let at = at % c.len();
            c[at] = byte;
            let _ = leaf(&c);
        }
    }
}
