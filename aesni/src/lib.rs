//! AES-256-XTS (IEEE 1619) with AES-NI, for the kernel's encrypted disks.
//!
//! The kernel's target, `x86_64-unknown-none`, is soft-float: LLVM has no XMM
//! registers there, not even inside `#[target_feature(enable = "aes")]` functions, so
//! the `aes` crate's AES-NI backend cannot compile in the kernel ("Do not know how to
//! split the result of this operator"). This crate is the same RustCrypto `aes` and
//! `xts-mode` code as `diskcrypt`'s, built by the kernel's build script for
//! `x86_64-hv-sse.json` (the kernel's target with SSE and the hard-float ABI) with fat
//! LTO, and linked into the kernel as one object whose only global symbols are the
//! `hv_aesni_*` functions below. Nothing here is hand-written cryptography: it is
//! glue that gives the kernel a C ABI (pointers and integers only, so the soft-float
//! and hard-float sides agree on every argument) to one `Xts128<Aes256>`.
//!
//! Why the kernel may run SSE code at all: both backends save the guest's x87/SSE
//! state with FXSAVE right after every exit and restore it right before every entry,
//! and the hypervisor never keeps a value of its own in an XMM register, so the
//! registers are free in between (`svm::backend`, `vmx::backend`).
//!
//! The target enables `aes` statically: the `aes` crate detects AES-NI through
//! `cpufeatures`, which on freestanding targets answers from the compile-time target
//! features only. So this code always uses AES-NI, and the kernel calls it only when
//! CPUID reports AES-NI, after checking it once against its own software cipher.

#![cfg_attr(target_os = "none", no_std)]

use aes::cipher::KeyInit;
use aes::Aes256;
use xts_mode::{get_tweak_default, Xts128};

/// One disk's cipher: data key and tweak key (IEEE 1619 §5.1).
pub type Cipher = Xts128<Aes256>;

/// The data unit: one 512-byte sector, as in `diskcrypt`.
pub const SECTOR_SIZE: usize = 512;

/// The size and alignment of the state [`hv_aesni_init`] writes.
///
/// # Safety
/// `size` and `align` are valid for writes.
#[no_mangle]
pub unsafe extern "C" fn hv_aesni_layout(size: *mut usize, align: *mut usize) {
    // SAFETY: the caller's contract.
    unsafe {
        size.write(core::mem::size_of::<Cipher>());
        align.write(core::mem::align_of::<Cipher>());
    }
}

/// Expands the 64-byte XTS key (data key, then tweak key) into `state`.
///
/// # Safety
/// `state` is valid for writes of [`hv_aesni_layout`]'s size and aligned to its
/// alignment, and holds no cipher (or one already dropped); `key` points to 64
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn hv_aesni_init(state: *mut Cipher, key: *const [u8; 64]) {
    // SAFETY: the caller's contract.
    let key = unsafe { &*key };
    let cipher = Xts128::new(Aes256::new(key[..32].into()), Aes256::new(key[32..].into()));
    // SAFETY: the caller's contract: writable, aligned, nothing to drop there.
    unsafe { state.write(cipher) };
}

/// Encrypts (`encrypt`) or decrypts `sectors` consecutive 512-byte sectors at `data`
/// in place, the first being data-area sector `first` (tweak `plain64`).
///
/// # Safety
/// `state` holds a cipher from [`hv_aesni_init`]; `data` is valid for reads and
/// writes of `sectors * 512` bytes and not aliased during the call.
#[no_mangle]
pub unsafe extern "C" fn hv_aesni_crypt(
    state: *const Cipher,
    first: u64,
    data: *mut u8,
    sectors: usize,
    encrypt: bool,
) {
    // SAFETY: the caller's contract.
    let (cipher, data) = unsafe {
        (
            &*state,
            core::slice::from_raw_parts_mut(data, sectors * SECTOR_SIZE),
        )
    };
    crypt(cipher, first, data, encrypt);
}

/// Drops the cipher in `state` (its key schedules are zeroized: the `aes` crate's
/// `zeroize` feature).
///
/// # Safety
/// `state` holds a cipher from [`hv_aesni_init`], which is not used again.
#[no_mangle]
pub unsafe extern "C" fn hv_aesni_drop(state: *mut Cipher) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::drop_in_place(state) };
}

/// The safe core of [`hv_aesni_crypt`]; `data` is whole sectors.
pub fn crypt(cipher: &Cipher, first: u64, data: &mut [u8], encrypt: bool) {
    let first = u128::from(first);
    if encrypt {
        cipher.encrypt_area(data, SECTOR_SIZE, first, get_tweak_default);
    } else {
        cipher.decrypt_area(data, SECTOR_SIZE, first, get_tweak_default);
    }
}

/// A panic here cannot unwind into the kernel: it stops on an undefined instruction,
/// which the kernel's #UD handler reports with its address. Nothing in this crate
/// panics on the inputs the kernel passes (whole sectors).
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        // SAFETY: UD2 only raises #UD.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 64] {
        core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
    }

    #[test]
    fn through_the_c_abi_as_diskcrypt_does_it() {
        let k = key();
        let mut size = 0;
        let mut align = 0;
        // SAFETY: both point to locals.
        unsafe { hv_aesni_layout(&mut size, &mut align) };
        let layout = std::alloc::Layout::from_size_align(size, align).unwrap();
        // SAFETY: the layout is the cipher's, non-zero in size.
        let state = unsafe { std::alloc::alloc(layout) } as *mut Cipher;
        assert!(!state.is_null());
        // SAFETY: fresh, aligned, the cipher's size; `k` is 64 bytes.
        unsafe { hv_aesni_init(state, &k) };
        let master = diskcrypt::MasterKey::from_bytes(k);
        let reference = diskcrypt::SectorCipher::new(&master);
        let plain: Vec<u8> = (0..8 * SECTOR_SIZE)
            .map(|i| (i * 7 + i / 512) as u8)
            .collect();
        let mut ours = plain.clone();
        // SAFETY: `state` holds a cipher; `ours` is 8 whole sectors.
        unsafe { hv_aesni_crypt(state, 1 << 40, ours.as_mut_ptr(), 8, true) };
        let mut theirs = plain.clone();
        reference.encrypt_sectors(1 << 40, &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        assert_ne!(ours, plain);
        // SAFETY: as above.
        unsafe { hv_aesni_crypt(state, 1 << 40, ours.as_mut_ptr(), 8, false) };
        assert_eq!(ours, plain);
        // SAFETY: initialised above, not used again; then freed with its layout.
        unsafe {
            hv_aesni_drop(state);
            std::alloc::dealloc(state as *mut u8, layout);
        }
    }
}
