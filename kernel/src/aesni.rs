//! AES-NI for the encrypted disks. The kernel's target is soft-float, so the `aes`
//! crate's AES-NI backend cannot be compiled into it; the `aesni` crate (the same
//! RustCrypto `aes` and `xts-mode` code) is built for an SSE target by `build.rs` and
//! linked in as one object whose only global symbols are the four functions below.
//! This module wraps them as a `diskcrypt::XtsEngine`.
//!
//! Running SSE code in the hypervisor is sound because no hypervisor state lives in
//! XMM registers and the guests' x87/SSE state is saved with FXSAVE right after every
//! exit and restored right before every entry (both backends), so whatever this code
//! leaves in the registers is never seen by a guest. It needs CR4.OSFXSR set and
//! CR0.EM/TS clear, which every processor has once its backend is enabled.
//!
//! Used only when CPUID reports AES-NI and SSE2 and the engine matches `diskcrypt`'s
//! software cipher on a test pattern at boot ([`init`]); otherwise the disks use the
//! software cipher, as before.

use alloc::boxed::Box;
use core::alloc::Layout;
use diskcrypt::{MasterKey, SectorCipher, XtsEngine, MASTER_KEY_LEN, SECTOR_SIZE};
use spin::Once;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

use crate::println;

// The `aesni` crate's C ABI (pointers and integers only: the soft-float kernel and
// the hard-float object agree on every argument). See aesni/src/lib.rs for each
// function's contract.
extern "C" {
    fn hv_aesni_layout(size: *mut usize, align: *mut usize);
    fn hv_aesni_init(state: *mut u8, key: *const [u8; MASTER_KEY_LEN]);
    fn hv_aesni_crypt(state: *const u8, first: u64, data: *mut u8, sectors: usize, encrypt: bool);
    fn hv_aesni_drop(state: *mut u8);
}

/// Whether the disks use AES-NI, decided once by [`init`].
static USE_AESNI: Once<bool> = Once::new();

/// One disk's cipher in the `aesni` object's own layout, on the heap.
struct NiCipher {
    state: *mut u8,
    layout: Layout,
}

// SAFETY: the state is the cipher's two AES key schedules, written once by
// `hv_aesni_init` and afterwards only read (`hv_aesni_crypt` takes it by shared
// reference); it holds no pointer and no thread-bound resource.
unsafe impl Send for NiCipher {}
// SAFETY: as above: concurrent `hv_aesni_crypt` calls only read the state.
unsafe impl Sync for NiCipher {}

impl NiCipher {
    fn new(key: &MasterKey) -> Option<Self> {
        let (mut size, mut align) = (0, 0);
        // SAFETY: both point to locals.
        unsafe { hv_aesni_layout(&mut size, &mut align) };
        let layout = Layout::from_size_align(size, align).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let state = unsafe { alloc::alloc::alloc(layout) };
        if state.is_null() {
            return None;
        }
        // SAFETY: `state` is fresh, of the cipher's size and alignment; the key is 64
        // bytes, as the function reads.
        unsafe { hv_aesni_init(state, key.as_bytes()) };
        Some(Self { state, layout })
    }

    fn crypt(&self, first: u64, data: &mut [u8], encrypt: bool) {
        // `SectorCipher` checked whole sectors before calling the engine.
        debug_assert!(data.len().is_multiple_of(SECTOR_SIZE));
        let sectors = data.len() / SECTOR_SIZE;
        // SAFETY: `state` holds the cipher from `new`; `data` is `sectors` whole
        // sectors, borrowed mutably for the call. The registers it uses are free (see
        // the module header), and `init` checked CR4.OSFXSR and CR0.EM/TS.
        unsafe { hv_aesni_crypt(self.state, first, data.as_mut_ptr(), sectors, encrypt) };
    }
}

impl XtsEngine for NiCipher {
    fn encrypt_area(&self, first: u64, data: &mut [u8]) {
        self.crypt(first, data, true);
    }
    fn decrypt_area(&self, first: u64, data: &mut [u8]) {
        self.crypt(first, data, false);
    }
}

impl Drop for NiCipher {
    fn drop(&mut self) {
        // SAFETY: `state` holds the cipher from `new`, dropped once (its key
        // schedules zeroized) and then freed with the layout it was allocated with.
        unsafe {
            hv_aesni_drop(self.state);
            alloc::alloc::dealloc(self.state, self.layout);
        }
    }
}

/// Decides, once, whether the disks use AES-NI, and says so in the boot report.
/// Called on the boot processor after its backend is enabled (which sets OSFXSR).
pub fn init() {
    USE_AESNI.call_once(|| match check() {
        Ok(()) => {
            println!("hv:   disk encryption: AES-NI (checked against the software cipher)");
            true
        }
        Err(why) => {
            println!("hv:   disk encryption: software AES ({why})");
            false
        }
    });
}

fn check() -> Result<(), &'static str> {
    let cpuid = raw_cpuid::CpuId::new();
    let features = cpuid.get_feature_info().ok_or("no CPUID leaf 1")?;
    if !features.has_aesni() || !features.has_sse2() {
        return Err("the processor has no AES-NI");
    }
    if !Cr4::read().contains(Cr4Flags::OSFXSR)
        || Cr0::read().intersects(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED)
    {
        return Err("SSE is not enabled on this processor");
    }
    // The same sectors through both ciphers, both directions, with a tweak above
    // 2^32: a mismatch means the linked object is not the cipher the disks were
    // written with, and the software one stays.
    let key = MasterKey::from_bytes(core::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ 0xa5));
    let ni = NiCipher::new(&key).ok_or("no memory for its key schedules")?;
    let soft = SectorCipher::new(&key);
    let plain: alloc::vec::Vec<u8> = (0..4 * SECTOR_SIZE).map(|i| (i ^ (i >> 9)) as u8).collect();
    let (mut a, mut b) = (plain.clone(), plain.clone());
    ni.encrypt_area(0x1_2345_6789, &mut a);
    soft.encrypt_sectors(0x1_2345_6789, &mut b)
        .map_err(|_| "the test pattern is not whole sectors")?;
    if a != b || a == plain {
        return Err("AES-NI disagrees with the software cipher");
    }
    ni.decrypt_area(0x1_2345_6789, &mut a);
    if a != plain {
        return Err("AES-NI does not decrypt what it encrypted");
    }
    Ok(())
}

/// The cipher for a disk unlocked with `key`: AES-NI when [`init`] chose it.
pub fn sector_cipher(key: &MasterKey) -> SectorCipher {
    if USE_AESNI.get().copied().unwrap_or(false) {
        if let Some(ni) = NiCipher::new(key) {
            return SectorCipher::with_engine(Box::new(ni));
        }
    }
    SectorCipher::new(key)
}
