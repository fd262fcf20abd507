//! A scratch directory for the configuration tests (removed when dropped), shared
//! by the tests of each table.

use std::path::PathBuf;

pub struct Scratch(pub PathBuf);

impl Scratch {
    /// An empty directory named after the test group and `name`.
    pub fn new(group: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("hv-{group}-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The same with a boot sector to boot, `boot.bin`.
    pub fn with_boot_sector(group: &str, name: &str) -> Self {
        let s = Self::new(group, name);
        let mut boot = vec![0u8; 512];
        boot[510] = 0x55;
        boot[511] = 0xAA;
        s.file("boot.bin", &boot);
        s
    }

    /// Writes `name` in the directory; returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
