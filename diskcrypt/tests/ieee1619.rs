//! XTS-AES-256 against the IEEE 1619-2007 Annex B test vectors 10 to 14: 512-byte
//! data units, key 1 = the digits of e, key 2 = the digits of pi, plaintext the bytes
//! 00..ff twice, data unit sequence numbers ff, ffff, ffffff, ffffffff, ffffffffff.
//! The ciphertexts are in `tests/data/ieee1619_vNN.hex` (one 32-byte row a line).
//!
//! The sequence number is the tweak as a little-endian integer, which is exactly how
//! `SectorCipher` turns a sector number into a tweak (dm-crypt's plain64), so these
//! vectors check the sector path end to end.

use diskcrypt::{MasterKey, SectorCipher, SECTOR_SIZE};

const KEY1: &str = "2718281828459045235360287471352662497757247093699959574966967627";
const KEY2: &str = "3141592653589793238462643383279502884197169399375105820974944592";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn cipher() -> SectorCipher {
    let mut k = hex(KEY1);
    k.extend(hex(KEY2));
    SectorCipher::new(&MasterKey::from_bytes(k.try_into().unwrap()))
}

fn plaintext() -> [u8; SECTOR_SIZE] {
    core::array::from_fn(|i| i as u8)
}

fn check(vector: u32, sequence: u64) {
    let path = format!(
        "{}/tests/data/ieee1619_v{vector}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let want: [u8; SECTOR_SIZE] = hex(&std::fs::read_to_string(&path).unwrap())
        .try_into()
        .unwrap();
    let c = cipher();
    let mut buf = plaintext();
    c.encrypt_sector(sequence, &mut buf);
    assert_eq!(buf, want, "vector {vector}: encryption");
    c.decrypt_sector(sequence, &mut buf);
    assert_eq!(buf, plaintext(), "vector {vector}: decryption");
    // The multi-sector path gives the same bytes.
    let mut area = plaintext();
    c.encrypt_sectors(sequence, &mut area).unwrap();
    assert_eq!(area, want, "vector {vector}: encrypt_sectors");
}

#[test]
fn vector_10() {
    check(10, 0xff);
}

#[test]
fn vector_11() {
    check(11, 0xffff);
}

#[test]
fn vector_12() {
    check(12, 0xff_ffff);
}

#[test]
fn vector_13() {
    check(13, 0xffff_ffff);
}

#[test]
fn vector_14() {
    check(14, 0xff_ffff_ffff);
}

/// A negative control: the neighbouring sequence number does not match, so the
/// vectors do pin the tweak.
#[test]
fn vector_10_wrong_sector_differs() {
    let c = cipher();
    let mut buf = plaintext();
    c.encrypt_sector(0xfe, &mut buf);
    let want = hex(&std::fs::read_to_string(format!(
        "{}/tests/data/ieee1619_v10.hex",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap());
    assert_ne!(buf[..], want[..]);
}
