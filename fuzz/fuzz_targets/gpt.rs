//! The GPT lookup (`gptdisk::read_table`, `find_partition`), which the kernel runs
//! on whatever the disk holds: arbitrary sectors give a table or an error, never a
//! panic, and an accepted table's partitions lie inside its usable range without
//! overlapping.
//!
//! Input: a u32 sector count (bounded), then 512-byte sectors that the disk holds
//! at its start and, mirrored, at its end (where the backup GPT lives); the sectors
//! between read as zeros.
#![no_main]

use libfuzzer_sys::fuzz_target;

const S: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((count, sectors)) = data.split_first_chunk::<4>() else {
        return;
    };
    let chunks: Vec<&[u8]> = sectors.chunks(S).collect();
    let n = chunks.len() as u64;
    let count = u64::from(u32::from_le_bytes(*count) % (1 << 20)).max(n);
    let reads = core::cell::Cell::new(0u64);
    let mut disk = |lba: u64, buf: &mut [u8; S]| -> Result<(), ()> {
        reads.set(reads.get() + 1);
        if lba >= count {
            return Err(());
        }
        buf.fill(0);
        let chunk = if lba < n {
            Some(chunks[lba as usize])
        } else if lba >= count - n {
            Some(chunks[(lba - (count - n)) as usize])
        } else {
            None
        };
        if let Some(c) = chunk {
            buf[..c.len()].copy_from_slice(c);
        }
        Ok(())
    };
    if let Ok(table) = gptdisk::read_table(&mut disk, count) {
        let mut ranges: Vec<_> = table.partitions.iter().map(|p| p.lbas.clone()).collect();
        ranges.sort_by_key(|r| r.start);
        for r in &ranges {
            assert!(r.start >= table.first_usable && r.end - 1 <= table.last_usable);
            assert!(r.end <= count);
        }
        for w in ranges.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
        let _ = table.find("linux-data");
    }
    // Two copies, each at most a header and MAX_ENTRIES * MAX_ENTRY_SIZE bytes.
    let bound =
        1 + 2 * (1 + (gptdisk::MAX_ENTRIES as u64 * gptdisk::MAX_ENTRY_SIZE as u64) / S as u64);
    assert!(reads.get() <= bound, "{} reads", reads.get());
    let _ = gptdisk::find_partition(&mut disk, count, "linux-data");
});
