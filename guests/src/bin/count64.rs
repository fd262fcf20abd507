//! `count64`: a guest that counts, and answers its console.
//!
//! For the management console's tests: it prints a line with a growing count about
//! every 300 ms (so pausing, resuming and restarting it show in its output), and
//! reads its serial port: each line typed to it is answered with `got <line> at
//! <count>` (so a snapshot's restore shows as the count going back). The
//! line `quiet` stops the counting lines and leaves a prompt without a newline
//! (as a shell's prompt is), which the hypervisor must show at once; `loud` brings
//! the counting back.
//!
//! Prints:
//! ```text
//! count64: started
//! count64: 1
//! count64: 2
//! count64: got <line> at <n>    (for each line typed to it)
//! count64>                      (after `quiet`, no newline)
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::cpu::inb;
    use guests::serial::COM1;
    use guests::tsc::{calibrate, rdtsc};
    use guests::{print, println};

    /// Time between two counting lines.
    const PERIOD_MS: u64 = 300;
    /// The longest line it keeps.
    const LINE_MAX: usize = 64;

    guests::entry_point!(main);

    /// A byte typed on its console, if one is there (LSR bit 0: data ready).
    fn read_byte() -> Option<u8> {
        // SAFETY: COM1 is the guest's own serial port; reading LSR has no side
        // effect, and RBR is read only when LSR says a byte is waiting.
        unsafe { (inb(COM1 + 5) & 1 != 0).then(|| inb(COM1)) }
    }

    fn main() {
        let rate = match calibrate() {
            Ok(r) => r,
            Err(e) => {
                println!("count64: FAIL cannot calibrate the TSC: {e}");
                return;
            }
        };
        println!("count64: started");
        let mut count: u64 = 0;
        let mut next = rate.deadline_ms(PERIOD_MS);
        let mut line = [0u8; LINE_MAX];
        let mut len = 0;
        let mut quiet = false;
        loop {
            if rdtsc() >= next {
                count += 1;
                next = rate.deadline_ms(PERIOD_MS);
                if !quiet {
                    println!("count64: {count}");
                }
            }
            let Some(b) = read_byte() else {
                guests::cpu::pause();
                continue;
            };
            match b {
                b'\r' | b'\n' => {
                    let text = core::str::from_utf8(&line[..len]).unwrap_or("?");
                    if quiet {
                        println!();
                    }
                    println!("count64: got {text} at {count}");
                    match text {
                        "quiet" => quiet = true,
                        "loud" => quiet = false,
                        _ => {}
                    }
                    if quiet {
                        print!("count64> ");
                    }
                    len = 0;
                }
                0x20..=0x7E if len < LINE_MAX => {
                    line[len] = b;
                    len += 1;
                }
                _ => {}
            }
        }
    }
}
