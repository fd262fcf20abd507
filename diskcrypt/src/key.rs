//! Key material and key-derivation parameters: the 64-byte XTS master key (zeroized
//! when dropped) and the Argon2id cost parameters with the bounds a header may carry.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::header::HeaderError;

/// Bytes in the master key: two AES-256 keys, XTS key 1 then key 2 (IEEE 1619 §5.1).
pub const MASTER_KEY_LEN: usize = 64;
/// Bytes of Argon2 salt stored in the header.
pub const SALT_LEN: usize = 32;
/// Random bytes `Header::format` takes from the caller's RNG: the salt, then the
/// master key.
pub const RANDOM_LEN: usize = SALT_LEN + MASTER_KEY_LEN;

/// Argon2 version 1.3 (RFC 9106 §3.1), the only one accepted.
pub const ARGON2_VERSION: u32 = 0x13;
/// The largest Argon2 memory a header may ask for: 1 GiB. A VM start that needs more
/// than that is a corrupt or hostile header, not a choice anyone made.
pub const MAX_MEMORY_KIB: u32 = 1 << 20;
/// The most Argon2 passes a header may ask for.
pub const MAX_ITERATIONS: u32 = 64;
/// The most Argon2 lanes a header may ask for (the kernel computes them one after
/// the other: lanes add memory hardness, not speed, here).
pub const MAX_LANES: u32 = 16;

/// The disk's master key. Never stored in clear; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; MASTER_KEY_LEN]);

impl MasterKey {
    /// A key from its 64 bytes (key 1, then key 2).
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes: key 1 (data) is `[..32]`, key 2 (tweak) `[32..]`.
    pub fn as_bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }

    /// XTS with key 1 = key 2 reduces to a weaker mode; SP 800-38E (and FIPS 140
    /// implementation guidance) require the halves to differ.
    pub(crate) fn halves_differ(&self) -> bool {
        self.0[..32] != self.0[32..]
    }
}

impl core::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Argon2id cost parameters (RFC 9106 §3.1): memory in KiB, passes, lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl KdfParams {
    /// The recommended defaults: 19 MiB, 2 passes, 1 lane, the smallest Argon2id
    /// setting OWASP's password storage guidance accepts. Measured (README, Disks):
    /// 20-40 ms on the development host, about 0.4 s under QEMU's TCG (user mode,
    /// `qemu64`, no AVX2): affordable at every VM start, even emulated.
    pub const DEFAULT: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        lanes: 1,
    };

    /// Checks the bounds a header may carry, each failure its own error.
    pub fn check(&self) -> Result<(), HeaderError> {
        if self.lanes == 0 || self.lanes > MAX_LANES {
            return Err(HeaderError::KdfLanes(self.lanes));
        }
        // RFC 9106 §3.1: m >= 8p.
        if self.memory_kib < 8 * self.lanes || self.memory_kib > MAX_MEMORY_KIB {
            return Err(HeaderError::KdfMemory(self.memory_kib));
        }
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return Err(HeaderError::KdfIterations(self.iterations));
        }
        Ok(())
    }

    /// The `argon2` crate's parameters for a 32-byte output. The bounds above lie
    /// within the crate's own, so this fails only for parameters `check` refuses.
    pub(crate) fn argon2(&self) -> Result<argon2::Params, HeaderError> {
        self.check()?;
        argon2::Params::new(self.memory_kib, self.iterations, self.lanes, Some(32))
            .map_err(|_| HeaderError::KdfMemory(self.memory_kib))
    }

    /// How many 1 KiB Argon2 blocks `Header::unlock` needs as working memory (the
    /// memory rounded down to a multiple of 4 x lanes, RFC 9106 §3.2).
    pub fn memory_blocks(&self) -> Result<usize, HeaderError> {
        Ok(self.argon2()?.block_count())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}
