//! Host speed figures for choosing parameters: AES-256-XTS throughput through
//! `SectorCipher` (64 KiB requests, as `EncryptedBackend` encrypts them) and the
//! time to unlock a header (Argon2id dominates) for m = 8, 16, 64 MiB, t = 1..3.
//!
//! `cargo run -p diskcrypt --release --example measure [xts|kdf] [MiB list]`.
//! Built with `RUSTFLAGS="--cfg aes_force_soft"` it measures the software AES the
//! kernel target uses.

use std::time::{Duration, Instant};

use diskcrypt::{Header, KdfParams, MasterKey, SectorCipher};

fn xts() {
    let key = MasterKey::from_bytes(core::array::from_fn(|i| i as u8 ^ 0xA5));
    let c = SectorCipher::new(&key);
    let mut buf = vec![0x33u8; 16 << 20];
    for (name, enc) in [("encrypt", true), ("decrypt", false)] {
        // Warm up once, then take the best of three passes over 16 MiB.
        let mut best = Duration::MAX;
        for _ in 0..4 {
            let t = Instant::now();
            for (i, chunk) in buf.chunks_mut(64 << 10).enumerate() {
                let sector = (i * 128) as u64;
                if enc {
                    c.encrypt_sectors(sector, chunk).unwrap();
                } else {
                    c.decrypt_sectors(sector, chunk).unwrap();
                }
            }
            best = best.min(t.elapsed());
        }
        println!("xts {name}: {:.0} MiB/s", 16.0 / best.as_secs_f64());
    }
}

fn kdf(mibs: &[u32]) {
    let random = core::array::from_fn(|i| i as u8);
    for &m in mibs {
        for t in 1..=3 {
            let params = KdfParams {
                memory_kib: m * 1024,
                iterations: t,
                lanes: 1,
            };
            let (bytes, _) = Header::format(b"passphrase", params, &random, 100).unwrap();
            let h = Header::parse(&bytes).unwrap();
            let mut mem = vec![diskcrypt::KdfBlock::default(); params.memory_blocks().unwrap()];
            let start = Instant::now();
            h.unlock(b"passphrase", &mut mem).unwrap();
            println!(
                "argon2id m={m:>2} MiB t={t} p=1: {:.0} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let mibs: Vec<u32> = if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![8, 16, 64]
    };
    if what == "xts" || what == "all" {
        xts();
    }
    if what == "kdf" || what == "all" {
        kdf(&mibs);
    }
}
