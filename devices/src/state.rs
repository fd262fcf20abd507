//! The snapshot byte format of every device model here (and of the `virtio` crate's
//! transport): what `state()` returns and `restore()` takes, the reader and writer
//! they are built with, and why a snapshot is refused ([`StateError`]).
//!
//! # Format
//!
//! A snapshot is an 8-byte tag naming the kind of device (`b"pic8259 "`,
//! `b"hvvirtio"`, ...), a little-endian u16 format version, then the device's fields
//! in a fixed order, all little-endian. A variable-length field (a FIFO's bytes, a
//! nested snapshot) is a u32 length and the bytes. A reader refuses another tag or
//! version, data that ends early and bytes left after the last field, so a snapshot
//! of one device or one version is never taken for another. Each device bumps its
//! version whenever its field list changes.
//!
//! # What is in a snapshot and what is not
//!
//! * Everything that decides what the guest sees next: registers, latches, modes,
//!   pending interrupts, FIFO contents, timer bases.
//! * Not the configuration that comes from the VM's shape (RAM size, CPU count,
//!   APIC IDs, fw_cfg contents, the PCI functions present): the device being
//!   restored was built from its VM's configuration and keeps it. The snapshot
//!   carries those values only to compare them: a snapshot of a differently shaped
//!   device is refused with [`StateError::Mismatch`], which names the difference.
//! * Not statistics (counters for reports), which restart.
//!
//! Restoring checks every value and changes nothing unless all of the snapshot is
//! accepted. A snapshot that is accepted is exactly what `state()` returns
//! afterwards: every field is stored as read, so there is one encoding per state.
//!
//! # Time
//!
//! Device times are the guest's time, the `now_ns` every timed call takes, stored as
//! absolute values on that timeline (the PIT's clock edges, the local APIC timer's
//! base and expiry). The VMM resumes the guest's clock from the snapshot's value,
//! so that the first `now_ns` a restored device sees is no earlier than the last one
//! the snapshotted device saw; timers then continue exactly. The RTC is the one
//! device that shows wall-clock time: it keeps the guest's offset from the wall
//! clock, so a restored guest reads the restoring host's date (plus whatever offset
//! it set), as a PC's battery-backed clock does after a suspend.
//!
//! # A platform's snapshot
//!
//! [`PlatformState`] lists what one VM's platform needs: the 8259 pair and the
//! IOAPIC ([`crate::Pic8259::state`], [`crate::IoApic::state`]), one
//! [`crate::LocalApic::state`] per vCPU, and the snapshot of every device on the
//! platform's buses ([`crate::BusDevice::snapshot`], in registration order; the PCI
//! root's includes its functions').

use alloc::vec::Vec;
use core::fmt;

/// The first 8 bytes of a snapshot: which kind of device wrote it.
pub type Tag = [u8; 8];

/// Why a snapshot was refused. The device is unchanged whenever one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Not a snapshot of this kind of device: another tag, or too short for one.
    WrongDevice { expected: Tag },
    /// A snapshot of this kind of device, in a format version this build does not
    /// read.
    Version {
        device: Tag,
        found: u16,
        supported: u16,
    },
    /// The data ends before the last field.
    Truncated { device: Tag },
    /// Bytes left after the last field.
    TrailingBytes { device: Tag },
    /// The snapshot was made by a device of another shape (the VM it came from had
    /// another number of CPUs, RAM size, ...): `what` differs, `snapshot` is its value
    /// in the snapshot and `here` in the device being restored.
    Mismatch {
        device: Tag,
        what: &'static str,
        snapshot: u64,
        here: u64,
    },
    /// A value the device could not have been in (corrupt data): `what` names it.
    Invalid { device: Tag, what: &'static str },
    /// This device (a `name()` of [`crate::BusDevice`] or [`crate::PciFunction`]) has
    /// no snapshot support.
    Unsupported { device: &'static str },
}

/// The tag as text: the ASCII bytes without the trailing padding.
fn tag_str(tag: &Tag) -> &str {
    core::str::from_utf8(tag)
        .unwrap_or("(non-ASCII tag)")
        .trim_end_matches([' ', '\0'])
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::WrongDevice { expected } => {
                write!(f, "not a snapshot of a {} device", tag_str(expected))
            }
            StateError::Version {
                device,
                found,
                supported,
            } => write!(
                f,
                "{} snapshot of format version {found}; this build reads version {supported}",
                tag_str(device)
            ),
            StateError::Truncated { device } => {
                write!(f, "{} snapshot ends early", tag_str(device))
            }
            StateError::TrailingBytes { device } => {
                write!(
                    f,
                    "{} snapshot has bytes after its last field",
                    tag_str(device)
                )
            }
            StateError::Mismatch {
                device,
                what,
                snapshot,
                here,
            } => write!(
                f,
                "{} snapshot comes from a differently shaped VM: {what} is {snapshot} \
                 in the snapshot and {here} here",
                tag_str(device)
            ),
            StateError::Invalid { device, what } => {
                write!(f, "{} snapshot holds an impossible {what}", tag_str(device))
            }
            StateError::Unsupported { device } => write!(f, "{device} cannot be snapshotted"),
        }
    }
}

/// Builds a snapshot: the tag and version first, then the fields in order.
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new(tag: &Tag, version: u16) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(tag);
        v.extend_from_slice(&version.to_le_bytes());
        Self(v)
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.0.push(v.into());
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A presence byte and the value (0 when absent, so the encoding stays unique).
    pub fn opt_u64(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        self.u64(v.unwrap_or(0));
    }
    /// A presence byte and the value (0 when absent).
    pub fn opt_i64(&mut self, v: Option<i64>) {
        self.bool(v.is_some());
        self.i64(v.unwrap_or(0));
    }
    /// Bytes of a length both sides know.
    pub fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A u32 length, then the bytes.
    ///
    /// # Panics
    ///
    /// If `b` is 4 GiB or longer, which no device state is.
    pub fn bytes(&mut self, b: &[u8]) {
        let len = u32::try_from(b.len()).expect("a device's state is far below 4 GiB");
        self.u32(len);
        self.0.extend_from_slice(b);
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a snapshot written by [`Writer`], refusing anything out of shape with a
/// [`StateError`] that names the device.
pub struct Reader<'a> {
    data: &'a [u8],
    tag: Tag,
}

impl<'a> Reader<'a> {
    /// Checks the tag and the version.
    pub fn new(data: &'a [u8], tag: &Tag, version: u16) -> Result<Self, StateError> {
        if data.get(..8) != Some(&tag[..]) {
            return Err(StateError::WrongDevice { expected: *tag });
        }
        let mut r = Reader {
            data: &data[8..],
            tag: *tag,
        };
        match r.u16()? {
            v if v == version => Ok(r),
            found => Err(StateError::Version {
                device: *tag,
                found,
                supported: version,
            }),
        }
    }

    /// The tag this reader checked, for errors built outside it.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.data.len() < n {
            return Err(StateError::Truncated { device: self.tag });
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    /// `N` bytes of a length both sides know.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    /// A byte that must be 0 or 1.
    pub fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid("boolean (not 0 or 1)")),
        }
    }
    pub fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, StateError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// What [`Writer::opt_u64`] wrote; an absent value must be stored as 0.
    pub fn opt_u64(&mut self) -> Result<Option<u64>, StateError> {
        let present = self.bool()?;
        let v = self.u64()?;
        match (present, v) {
            (true, v) => Ok(Some(v)),
            (false, 0) => Ok(None),
            (false, _) => Err(self.invalid("absent value stored as non-zero")),
        }
    }
    /// What [`Writer::opt_i64`] wrote.
    pub fn opt_i64(&mut self) -> Result<Option<i64>, StateError> {
        Ok(self.opt_u64()?.map(|v| v as i64))
    }
    /// What [`Writer::bytes`] wrote.
    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.u32()?;
        // A length past the data's end is truncation, whatever usize can hold.
        let n = usize::try_from(n).map_err(|_| StateError::Truncated { device: self.tag })?;
        self.take(n)
    }
    /// The last field has been read: nothing may follow.
    pub fn end(&self) -> Result<(), StateError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(StateError::TrailingBytes { device: self.tag })
        }
    }

    /// [`StateError::Invalid`] for this device.
    pub fn invalid(&self, what: &'static str) -> StateError {
        StateError::Invalid {
            device: self.tag,
            what,
        }
    }
    /// `Ok` when `ok`, else [`StateError::Invalid`] naming `what`.
    pub fn check(&self, ok: bool, what: &'static str) -> Result<(), StateError> {
        if ok {
            Ok(())
        } else {
            Err(self.invalid(what))
        }
    }
    /// Reads a u64 of the device's shape and compares it with the value `here`.
    pub fn expect_u64(&mut self, what: &'static str, here: u64) -> Result<(), StateError> {
        let snapshot = self.u64()?;
        self.expect(what, snapshot, here)
    }
    /// [`StateError::Mismatch`] unless `snapshot == here`.
    pub fn expect(&self, what: &'static str, snapshot: u64, here: u64) -> Result<(), StateError> {
        if snapshot == here {
            Ok(())
        } else {
            Err(StateError::Mismatch {
                device: self.tag,
                what,
                snapshot,
                here,
            })
        }
    }
}

/// A 64-bit FNV-1a hash (Fowler, Noll, Vo; draft-eastlake-fnv) of configuration a
/// snapshot must match but does not carry (fw_cfg's items): a few lines, no table;
/// it tells configurations apart, it is not a defence against a forger (whoever
/// can write a snapshot can write the guest's RAM too).
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Fingerprint {
    pub const fn new() -> Self {
        Self(0xCBF2_9CE4_8422_2325)
    }
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a snapshot of one VM's platform holds, as the VMM gathers it: see
/// the module documentation. The VMM adds the rest of the VM (vCPU registers,
/// RAM, disks) beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformState {
    /// [`crate::Pic8259::state`].
    pub pic: Vec<u8>,
    /// [`crate::IoApic::state`].
    pub ioapic: Vec<u8>,
    /// [`crate::LocalApic::state`], one per vCPU in vCPU order.
    pub lapics: Vec<Vec<u8>>,
    /// [`crate::BusDevice::snapshot`], one per bus device in registration order.
    pub bus_devices: Vec<Vec<u8>>,
}

impl PlatformState {
    pub const TAG: Tag = *b"platform";
    pub const VERSION: u16 = 1;

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::TAG, Self::VERSION);
        w.bytes(&self.pic);
        w.bytes(&self.ioapic);
        for list in [&self.lapics, &self.bus_devices] {
            w.u32(list.len() as u32);
            for part in list {
                w.bytes(part);
            }
        }
        w.finish()
    }

    /// Splits what [`Self::encode`] wrote, for a VM with `cpus` vCPUs and
    /// `bus_devices` bus devices (anything else is a [`StateError::Mismatch`]). The
    /// parts themselves are checked by the devices' `restore`.
    pub fn decode(data: &[u8], cpus: usize, bus_devices: usize) -> Result<Self, StateError> {
        let mut r = Reader::new(data, &Self::TAG, Self::VERSION)?;
        let pic = r.bytes()?.to_vec();
        let ioapic = r.bytes()?.to_vec();
        let mut lists: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for (list, (what, here)) in lists
            .iter_mut()
            .zip([("vCPU count", cpus), ("bus device count", bus_devices)])
        {
            let n = r.u32()?;
            r.expect(what, n.into(), here as u64)?;
            for _ in 0..n {
                list.push(r.bytes()?.to_vec());
            }
        }
        r.end()?;
        let [lapics, bus_devices] = lists;
        Ok(Self {
            pic,
            ioapic,
            lapics,
            bus_devices,
        })
    }
}

/// What every device's snapshot tests check, with a fixed-seed PRNG for the
/// fuzz-style parts.
#[cfg(test)]
pub(crate) mod testing {
    extern crate std;
    use super::*;
    use std::vec;

    /// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift
    /// generators"): deterministic test input, nothing more.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Self(seed | 1)
        }
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// 0 ..= n - 1 (n > 0).
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        pub fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        pub fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    /// Runs 5,000 random operations from `seed` on `a` and on `b` (a device and its
    /// restored copy, each with whatever the operations need beside it, such as a
    /// clock) in lockstep and asserts that both answer alike at every step.
    pub fn lockstep<S, R: PartialEq + core::fmt::Debug>(
        a: &mut S,
        b: &mut S,
        seed: u64,
        mut op: impl FnMut(&mut S, &mut Rng) -> R,
    ) {
        let mut rng = Rng::new(seed);
        for step in 0..5000 {
            let seed = rng.next();
            let mut r1 = Rng::new(seed);
            let mut r2 = Rng::new(seed);
            assert_eq!(op(a, &mut r1), op(b, &mut r2), "step {step}");
        }
    }

    /// A device as the checks see it.
    pub trait Snap {
        fn snap(&self) -> Vec<u8>;
        fn load(&mut self, data: &[u8]) -> Result<(), StateError>;
    }

    /// Implements [`Snap`] through the type's own `state`/`restore`.
    macro_rules! snap_impl {
        ($($ty:ty),* $(,)?) => {$(
            impl $crate::state::testing::Snap for $ty {
                fn snap(&self) -> alloc::vec::Vec<u8> {
                    self.state()
                }
                fn load(&mut self, data: &[u8]) -> Result<(), $crate::state::StateError> {
                    self.restore(data)
                }
            }
        )*};
    }
    pub(crate) use snap_impl;

    /// The refusals every device must make, each leaving it unchanged, then random
    /// bytes and random corruptions of `good` (a snapshot of a device in an
    /// interesting state), which must never panic: a refused one changes nothing,
    /// an accepted one is what `state()` gives back (one encoding per state), after
    /// which `exercise` drives the device through its guest interface (which must not
    /// panic either).
    pub fn check_refusals<D: Snap>(dev: &mut D, good: &[u8], mut exercise: impl FnMut(&mut D)) {
        let tag: Tag = good[..8].try_into().unwrap();
        dev.load(good).expect("the good snapshot is accepted");
        let before = dev.snap();
        assert_eq!(before, good, "restore then state gives the snapshot back");
        let refused = |dev: &mut D, data: &[u8], why: &str| {
            let r = dev.load(data);
            assert!(r.is_err(), "{why}: accepted");
            assert_eq!(dev.snap(), before, "{why}: refused but changed the device");
            r.unwrap_err()
        };

        for cut in 0..good.len() {
            let e = refused(dev, &good[..cut], "truncated");
            if cut < 8 {
                assert_eq!(e, StateError::WrongDevice { expected: tag }, "cut {cut}");
            } else {
                assert_eq!(e, StateError::Truncated { device: tag }, "cut {cut}");
            }
        }
        let version = u16::from_le_bytes([good[8], good[9]]);
        for other in [version.wrapping_add(1), version.wrapping_sub(1), 0xFFFF] {
            let mut bad = good.to_vec();
            bad[8..10].copy_from_slice(&other.to_le_bytes());
            let e = refused(dev, &bad, "other version");
            assert_eq!(
                e,
                StateError::Version {
                    device: tag,
                    found: other,
                    supported: version
                }
            );
        }
        for i in 0..8 {
            let mut bad = good.to_vec();
            bad[i] ^= 0x20;
            let e = refused(dev, &bad, "other tag");
            assert_eq!(e, StateError::WrongDevice { expected: tag });
        }
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            refused(dev, &long, "trailing byte"),
            StateError::TrailingBytes { device: tag }
        );
        // The errors read as sentences.
        let text = std::format!("{}", StateError::TrailingBytes { device: tag });
        assert!(!text.is_empty() && !text.contains('\0'));

        let mut rng = Rng::new(0x5EED ^ u64::from_le_bytes(tag));
        // Random bytes, with and without a valid header in front.
        for round in 0..2000 {
            let len = rng.below(2 * good.len() as u64 + 1) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if round % 2 == 0 {
                let mut with_header = good[..10].to_vec();
                with_header.append(&mut data);
                data = with_header;
            }
            try_one(dev, &data, &before, good, &mut exercise);
        }
        // Corruptions of the good snapshot: a few bytes replaced, or a few bits
        // flipped, anywhere after the header.
        for _ in 0..6000 {
            let mut data = good.to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = 10 + rng.below((good.len() - 10) as u64) as usize;
                if rng.chance(2) {
                    data[at] = rng.byte();
                } else {
                    data[at] ^= 1 << rng.below(8);
                }
            }
            try_one(dev, &data, &before, good, &mut exercise);
        }
        dev.load(good).unwrap();
    }

    fn try_one<D: Snap>(
        dev: &mut D,
        data: &[u8],
        before: &[u8],
        good: &[u8],
        exercise: &mut impl FnMut(&mut D),
    ) {
        match dev.load(data) {
            Err(_) => assert_eq!(dev.snap(), before, "refused but changed: {data:02x?}"),
            Ok(()) => {
                assert_eq!(dev.snap(), data, "accepted but not canonical");
                exercise(dev);
                dev.load(good).expect("back to the good snapshot");
            }
        }
    }

    #[test]
    fn reader_and_writer_agree() {
        const TAG: Tag = *b"test    ";
        let mut w = Writer::new(&TAG, 3);
        w.u8(7);
        w.bool(true);
        w.u16(0x1234);
        w.u32(0xDEAD_BEEF);
        w.u64(u64::MAX - 1);
        w.i64(-5);
        w.opt_u64(None);
        w.opt_i64(Some(-1));
        w.raw(&[1, 2]);
        w.bytes(&[9; 5]);
        let data = w.finish();
        let mut r = Reader::new(&data, &TAG, 3).unwrap();
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.u16(), Ok(0x1234));
        assert_eq!(r.u32(), Ok(0xDEAD_BEEF));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.opt_u64(), Ok(None));
        assert_eq!(r.opt_i64(), Ok(Some(-1)));
        assert_eq!(r.array::<2>(), Ok([1, 2]));
        assert_eq!(r.bytes(), Ok(&[9u8; 5][..]));
        assert_eq!(r.end(), Ok(()));
        assert_eq!(r.u8(), Err(StateError::Truncated { device: TAG }));

        assert_eq!(
            Reader::new(&data, b"other   ", 3).err(),
            Some(StateError::WrongDevice {
                expected: *b"other   "
            })
        );
        assert_eq!(
            Reader::new(&data, &TAG, 4).err(),
            Some(StateError::Version {
                device: TAG,
                found: 3,
                supported: 4
            })
        );
        let mut bad = data.clone();
        bad[11] = 2; // the boolean
        let mut r = Reader::new(&bad, &TAG, 3).unwrap();
        r.u8().unwrap();
        assert!(matches!(r.bool(), Err(StateError::Invalid { .. })));
        // An absent value must be stored as 0.
        let mut w = Writer::new(&TAG, 3);
        w.bool(false);
        w.u64(1);
        let data = w.finish();
        let mut r = Reader::new(&data, &TAG, 3).unwrap();
        assert!(r.opt_u64().is_err());
        // A length past the end is truncation.
        let mut w = Writer::new(&TAG, 3);
        w.u32(u32::MAX);
        let data = w.finish();
        let mut r = Reader::new(&data, &TAG, 3).unwrap();
        assert_eq!(r.bytes(), Err(StateError::Truncated { device: TAG }));
    }

    #[test]
    fn errors_name_the_device_and_the_difference() {
        let e = StateError::Mismatch {
            device: *b"fw_cfg  ",
            what: "CPU count",
            snapshot: 4,
            here: 2,
        };
        assert_eq!(
            std::format!("{e}"),
            "fw_cfg snapshot comes from a differently shaped VM: CPU count is 4 in the \
             snapshot and 2 here"
        );
        assert_eq!(
            std::format!(
                "{}",
                StateError::Version {
                    device: *b"lapic   ",
                    found: 9,
                    supported: 1
                }
            ),
            "lapic snapshot of format version 9; this build reads version 1"
        );
        assert_eq!(
            std::format!(
                "{}",
                StateError::WrongDevice {
                    expected: *b"pit8254 "
                }
            ),
            "not a snapshot of a pit8254 device"
        );
    }

    #[test]
    fn fingerprint_is_fnv1a() {
        // Test vectors of draft-eastlake-fnv (FNV-1a 64).
        let mut f = Fingerprint::new();
        assert_eq!(f.finish(), 0xCBF2_9CE4_8422_2325);
        f.add(b"a");
        assert_eq!(f.finish(), 0xAF63_DC4C_8601_EC8C);
        let mut f = Fingerprint::new();
        f.add(b"foobar");
        assert_eq!(f.finish(), 0x8594_4171_F739_67E8);
    }

    #[test]
    fn platform_state_round_trip_and_shape() {
        let p = PlatformState {
            pic: vec![1, 2, 3],
            ioapic: vec![4],
            lapics: vec![vec![5], vec![6, 7]],
            bus_devices: vec![vec![], vec![8; 20], vec![9]],
        };
        let data = p.encode();
        assert_eq!(PlatformState::decode(&data, 2, 3), Ok(p.clone()));
        assert_eq!(
            PlatformState::decode(&data, 4, 3),
            Err(StateError::Mismatch {
                device: PlatformState::TAG,
                what: "vCPU count",
                snapshot: 2,
                here: 4
            })
        );
        assert!(matches!(
            PlatformState::decode(&data, 2, 2),
            Err(StateError::Mismatch {
                what: "bus device count",
                ..
            })
        ));
        for cut in 0..data.len() {
            assert!(PlatformState::decode(&data[..cut], 2, 3).is_err());
        }
        let mut long = data.clone();
        long.push(0);
        assert!(PlatformState::decode(&long, 2, 3).is_err());
        // Random bytes never panic.
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let mut d = data.clone();
            let at = rng.below(d.len() as u64) as usize;
            d[at] = rng.byte();
            let _ = PlatformState::decode(&d, 2, 3);
        }
    }
}
