//! The administrator passphrase: its Argon2id hash (RFC 9106), which xtask derives
//! and packs in the bundle so that the passphrase itself is never on the boot
//! medium; the check of a typed passphrase against it; and the [`Gate`] that makes
//! guessing slow (a delay that doubles after each wrong attempt) and keeps an
//! administrator session open until the operator leaves the prompt.

use argon2::{Algorithm, Argon2, Params, Version};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

pub use argon2::Block;

pub const SALT_LEN: usize = 16;
pub const HASH_LEN: usize = 32;

/// An Argon2id hash of the administrator passphrase with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
    pub salt: [u8; SALT_LEN],
    pub hash: [u8; HASH_LEN],
}

/// Why a credential cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The parameters are outside what Argon2 accepts.
    Params,
    /// The working memory handed in is not the size [`Credential::memory_blocks`] says.
    Memory,
}

impl core::fmt::Display for AuthError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(match self {
            AuthError::Params => "the administrator credential's Argon2id parameters are invalid",
            AuthError::Memory => "wrong amount of Argon2id working memory",
        })
    }
}

fn argon2(memory_kib: u32, iterations: u32, lanes: u32) -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(memory_kib, iterations, lanes, Some(HASH_LEN))
        .map_err(|_| AuthError::Params)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl Credential {
    /// Derives the credential of `passphrase` (xtask does this when it packs the
    /// bundle; the salt must be random).
    pub fn derive(
        passphrase: &[u8],
        salt: [u8; SALT_LEN],
        memory_kib: u32,
        iterations: u32,
        lanes: u32,
    ) -> Result<Credential, AuthError> {
        let mut hash = [0; HASH_LEN];
        argon2(memory_kib, iterations, lanes)?
            .hash_password_into(passphrase, &salt, &mut hash)
            .map_err(|_| AuthError::Params)?;
        Ok(Credential {
            memory_kib,
            iterations,
            lanes,
            salt,
            hash,
        })
    }

    /// How many 1 KiB blocks of working memory [`Credential::verify`] needs (the
    /// kernel takes them from page frames rather than its heap).
    pub fn memory_blocks(&self) -> Result<usize, AuthError> {
        Ok(argon2(self.memory_kib, self.iterations, self.lanes)?
            .params()
            .block_count())
    }

    /// Whether `passphrase` is the one this credential was derived from. The hashes
    /// are compared in constant time; `memory` is wiped afterwards.
    pub fn verify(&self, passphrase: &[u8], memory: &mut [Block]) -> Result<bool, AuthError> {
        let a = argon2(self.memory_kib, self.iterations, self.lanes)?;
        if memory.len() != a.params().block_count() {
            return Err(AuthError::Memory);
        }
        let mut hash = [0; HASH_LEN];
        let r = a.hash_password_into_with_memory(passphrase, &self.salt, &mut hash, &mut *memory);
        for b in memory.iter_mut() {
            *b = Block::default();
        }
        r.map_err(|_| AuthError::Params)?;
        let same = bool::from(hash.ct_eq(&self.hash));
        hash.zeroize();
        Ok(same)
    }
}

/// The first wrong attempt costs this long before the next one is taken ...
pub const FIRST_DELAY_MS: u64 = 1_000;
/// ... each further one twice as long, up to this.
pub const MAX_DELAY_MS: u64 = 60_000;
/// An administrator session ends after this long without a privileged command.
pub const SESSION_IDLE_MS: u64 = 10 * 60_000;

/// Who may run privileged commands now, and when the next passphrase is taken.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    /// Wrong attempts since the last right one.
    failures: u32,
    /// No attempt is taken before this time (ms).
    wait_until_ms: u64,
    /// The session's last privileged command (ms), while one is open.
    session: Option<u64>,
}

impl Gate {
    pub const fn new() -> Self {
        Self {
            failures: 0,
            wait_until_ms: 0,
            session: None,
        }
    }

    /// The delay after `failures` wrong attempts in a row.
    pub fn delay_ms(failures: u32) -> u64 {
        match failures {
            0 => 0,
            n => FIRST_DELAY_MS
                .saturating_mul(1u64 << (n - 1).min(16))
                .min(MAX_DELAY_MS),
        }
    }

    /// Wrong attempts since the last right one.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// `Err(ms)`: an attempt now would come too soon; wait that long.
    pub fn may_try(&self, now_ms: u64) -> Result<(), u64> {
        if now_ms < self.wait_until_ms {
            Err(self.wait_until_ms - now_ms)
        } else {
            Ok(())
        }
    }

    /// Records a wrong attempt; returns the delay before the next one.
    pub fn failed(&mut self, now_ms: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        let delay = Self::delay_ms(self.failures);
        self.wait_until_ms = now_ms + delay;
        self.session = None;
        delay
    }

    /// Records a right attempt: a session opens.
    pub fn succeeded(&mut self, now_ms: u64) {
        self.failures = 0;
        self.wait_until_ms = 0;
        self.session = Some(now_ms);
    }

    /// Whether a session is open now (and if so, keeps it open).
    pub fn authorised(&mut self, now_ms: u64) -> bool {
        match self.session {
            Some(last) if now_ms.saturating_sub(last) < SESSION_IDLE_MS => {
                self.session = Some(now_ms);
                true
            }
            _ => {
                self.session = None;
                false
            }
        }
    }

    /// Ends the session (`logout`, leaving the prompt).
    pub fn end_session(&mut self) {
        self.session = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn small(pass: &[u8]) -> Credential {
        Credential::derive(pass, [7; SALT_LEN], 64, 1, 1).unwrap()
    }

    #[test]
    fn verifies_the_right_passphrase_only() {
        let c = small(b"correct horse");
        let mut mem = vec![Block::default(); c.memory_blocks().unwrap()];
        assert_eq!(c.verify(b"correct horse", &mut mem), Ok(true));
        assert_eq!(c.verify(b"correct hors", &mut mem), Ok(false));
        assert_eq!(c.verify(b"", &mut mem), Ok(false));
        // Another salt is another hash.
        let other = Credential::derive(b"correct horse", [8; SALT_LEN], 64, 1, 1).unwrap();
        assert_ne!(other.hash, c.hash);
        assert!(
            mem.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)),
            "memory wiped"
        );
    }

    #[test]
    fn matches_an_independent_argon2id() {
        // The same derivation through the crate's allocating API.
        let c = Credential::derive(b"pw", [1; SALT_LEN], 256, 2, 1).unwrap();
        let mut expect = [0; HASH_LEN];
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(256, 2, 1, Some(32)).unwrap(),
        )
        .hash_password_into(b"pw", &[1; SALT_LEN], &mut expect)
        .unwrap();
        assert_eq!(c.hash, expect);
    }

    #[test]
    fn refuses_bad_parameters_and_memory() {
        let mut c = small(b"x");
        let mut mem = vec![Block::default(); c.memory_blocks().unwrap() - 1];
        assert_eq!(c.verify(b"x", &mut mem), Err(AuthError::Memory));
        c.iterations = 0;
        assert_eq!(c.memory_blocks(), Err(AuthError::Params));
        assert_eq!(c.verify(b"x", &mut mem), Err(AuthError::Params));
        assert!(Credential::derive(b"x", [0; SALT_LEN], 1, 1, 1).is_err());
    }

    #[test]
    fn delay_doubles_and_is_capped() {
        assert_eq!(Gate::delay_ms(0), 0);
        assert_eq!(Gate::delay_ms(1), 1_000);
        assert_eq!(Gate::delay_ms(2), 2_000);
        assert_eq!(Gate::delay_ms(4), 8_000);
        assert_eq!(Gate::delay_ms(7), 60_000);
        assert_eq!(Gate::delay_ms(u32::MAX), 60_000);
    }

    #[test]
    fn gate_sequence() {
        let mut g = Gate::new();
        assert_eq!(g.may_try(0), Ok(()));
        assert!(!g.authorised(0));
        assert_eq!(g.failed(100), 1_000);
        assert_eq!(g.may_try(600), Err(500));
        assert_eq!(g.may_try(1_100), Ok(()));
        assert_eq!(g.failed(1_100), 2_000);
        assert_eq!(g.failures(), 2);
        assert_eq!(g.may_try(3_099), Err(1));
        g.succeeded(3_100);
        assert_eq!(g.failures(), 0);
        assert_eq!(g.may_try(3_100), Ok(()));
        assert!(g.authorised(3_200));
        // Idle too long: the session is gone.
        assert!(g.authorised(3_200 + SESSION_IDLE_MS - 1));
        assert!(!g.authorised(3_200 + 2 * SESSION_IDLE_MS));
        g.succeeded(0);
        g.end_session();
        assert!(!g.authorised(1));
        // A failure ends a session too.
        g.succeeded(0);
        g.failed(1);
        assert!(!g.authorised(2));
    }
}
