//! The PS/2 keyboard controller (an 8042 running the PC/AT firmware) at ports 0x60
//! (data) and 0x64 (status/command), with no keyboard and no mouse attached, and
//! System Control Port A at 0x92 ([`SystemControlA`]).
//!
//! Guests talk to it for two reasons that matter here: Linux's i8042 driver probes it
//! at boot, and the classic way to reboot a PC is to pulse the CPU reset line through
//! it (command 0xFE, Linux's default `reboot=kbd` path once ACPI is off). Commands
//! follow the IBM PS/2 Hardware Interface Technical Reference (keyboard/auxiliary
//! device controller) and the names in Linux's drivers/input/serio/i8042.h.
//!
//! What Linux's probe sees: a controller that passes its self-test (0xAA -> 0x55) and
//! interface tests (0xAB, 0xA9 -> 0x00), whose command byte (CTR) reads back what was
//! written and reflects the enable/disable commands (0xAD/0xAE, 0xA7/0xA8), and whose
//! loopback commands (0xD2, 0xD3) echo a byte as keyboard or auxiliary data, which is
//! how Linux tests the AUX port and its IRQ 12 and rules out a multiplexing
//! controller. Bytes sent to the devices themselves (a data write with no command
//! pending, or 0xD4's argument) go nowhere: no keyboard or mouse ever answers, so the
//! PS/2 drivers time out in the background and find nothing.
//!
//! ## Interrupts
//!
//! The controller's output-buffer-full signal is its interrupt: IRQ 1 when the byte is
//! keyboard data and CTR bit 0 is set, IRQ 12 when it is auxiliary data and CTR bit 1
//! is set. [`I8042::kbd_irq_level`] and [`I8042::aux_irq_level`] are those lines; the
//! VMM samples them after each access with an [`crate::IrqEdge`] each and raises the
//! IRQ on a rising edge (ISA IRQs are edge-triggered).
//!
//! ## Reset and A20
//!
//! Pulse commands 0xF0-0xFF with bit 0 clear (0xFE is the usual one), and output port
//! writes (0xD1) with bit 0 clear, assert the CPU reset line:
//! [`I8042::take_reset_request`] reports it. The A20 gate (output port bit 1, commands
//! 0xDD/0xDF) is recorded but not applied: guest memory never wraps at 1 MiB.

use alloc::vec::Vec;

use crate::bus::{read_bytewise, write_bytewise, PortDevice};
use crate::state::{Reader, StateError, Tag, Writer};

/// The data port.
pub const DATA_PORT: u16 = 0x60;
/// The status (read) / command (write) port.
pub const COMMAND_PORT: u16 = 0x64;
/// The keyboard's ISA IRQ.
pub const KBD_IRQ: u8 = 1;
/// The auxiliary (mouse) port's ISA IRQ.
pub const AUX_IRQ: u8 = 12;
/// System Control Port A.
pub const SYSTEM_CONTROL_A_PORT: u16 = 0x92;

/// Status register bits.
pub mod status {
    /// Output buffer full: a byte waits at port 0x60.
    pub const OBF: u8 = 1 << 0;
    /// Input buffer full: the controller has not taken the last write yet (never,
    /// here: writes are processed at once).
    pub const IBF: u8 = 1 << 1;
    /// System flag: set by a passed self-test, mirrors CTR bit 2.
    pub const SYS: u8 = 1 << 2;
    /// The last write went to the command port.
    pub const CMD: u8 = 1 << 3;
    /// Keyboard not inhibited by the keylock switch.
    pub const UNLOCKED: u8 = 1 << 4;
    /// The output buffer holds auxiliary-device data.
    pub const AUX_DATA: u8 = 1 << 5;
    pub const TIMEOUT: u8 = 1 << 6;
    pub const PARITY: u8 = 1 << 7;
}

/// Controller command byte (CTR, internal RAM byte 0) bits.
pub mod ctr {
    pub const KBD_INT: u8 = 1 << 0;
    pub const AUX_INT: u8 = 1 << 1;
    pub const SYS: u8 = 1 << 2;
    pub const IGNORE_KEYLOCK: u8 = 1 << 3;
    pub const KBD_DISABLE: u8 = 1 << 4;
    pub const AUX_DISABLE: u8 = 1 << 5;
    /// Translate keyboard scan code set 2 to set 1.
    pub const XLATE: u8 = 1 << 6;
    /// What a PC BIOS typically leaves: translation, AUX disabled, system flag,
    /// keyboard interrupt.
    pub const BIOS_DEFAULT: u8 = XLATE | AUX_DISABLE | SYS | KBD_INT;
}

/// Controller commands (written to port 0x64).
pub mod cmd {
    /// 0x20-0x3F: read internal RAM byte N (0x20 is the CTR).
    pub const READ_CTR: u8 = 0x20;
    /// 0x60-0x7F: write internal RAM byte N from the next data byte.
    pub const WRITE_CTR: u8 = 0x60;
    pub const AUX_DISABLE: u8 = 0xA7;
    pub const AUX_ENABLE: u8 = 0xA8;
    pub const AUX_TEST: u8 = 0xA9;
    pub const SELF_TEST: u8 = 0xAA;
    pub const KBD_TEST: u8 = 0xAB;
    pub const KBD_DISABLE: u8 = 0xAD;
    pub const KBD_ENABLE: u8 = 0xAE;
    pub const READ_INPUT_PORT: u8 = 0xC0;
    pub const READ_OUTPUT_PORT: u8 = 0xD0;
    pub const WRITE_OUTPUT_PORT: u8 = 0xD1;
    /// Loopback: the next data byte comes back as keyboard data.
    pub const KBD_LOOP: u8 = 0xD2;
    /// Loopback: the next data byte comes back as auxiliary data.
    pub const AUX_LOOP: u8 = 0xD3;
    /// The next data byte goes to the auxiliary device.
    pub const AUX_SEND: u8 = 0xD4;
    pub const A20_DISABLE: u8 = 0xDD;
    pub const A20_ENABLE: u8 = 0xDF;
    pub const READ_TEST_INPUTS: u8 = 0xE0;
    /// Pulse output port bit 0 (CPU reset) low.
    pub const RESET: u8 = 0xFE;
}

/// Output port bits.
pub mod output_port {
    /// The CPU reset line, active low.
    pub const RESET_N: u8 = 1 << 0;
    pub const A20: u8 = 1 << 1;
    /// Output buffer full with keyboard data (the IRQ 1 line).
    pub const KBD_OBF: u8 = 1 << 4;
    /// Output buffer full with auxiliary data (the IRQ 12 line).
    pub const AUX_OBF: u8 = 1 << 5;
    /// Keyboard clock and data lines, idle high.
    pub const KBD_LINES: u8 = 0xC0;
}

/// What the next data-port write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Nothing: the byte is for the keyboard.
    Keyboard,
    WriteRam(u8),
    WriteOutputPort,
    KbdLoop,
    AuxLoop,
    AuxSend,
}

/// The keyboard controller.
#[derive(Clone, Debug)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the CTR.
    ram: [u8; 32],
    /// The output buffer: a byte and whether it is auxiliary data.
    output: Option<(u8, bool)>,
    /// What port 0x60 reads once the buffer is empty: the last byte, as the latch does.
    last_output: u8,
    last_write_was_command: bool,
    pending: Pending,
    a20: bool,
    reset_request: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller as a BIOS leaves it: self-test passed, CTR
    /// [`ctr::BIOS_DEFAULT`], A20 enabled, output buffer empty.
    pub const fn new() -> Self {
        let mut ram = [0u8; 32];
        ram[0] = ctr::BIOS_DEFAULT;
        Self {
            ram,
            output: None,
            last_output: 0,
            last_write_was_command: false,
            pending: Pending::Keyboard,
            a20: true,
            reset_request: false,
        }
    }

    /// The status register (port 0x64 reads); no side effects.
    pub fn status(&self) -> u8 {
        let mut value = status::UNLOCKED | (self.ctr() & ctr::SYS);
        if self.last_write_was_command {
            value |= status::CMD;
        }
        match self.output {
            Some((_, true)) => value |= status::OBF | status::AUX_DATA,
            Some((_, false)) => value |= status::OBF,
            None => {}
        }
        value
    }

    /// Reads port 0x60: takes the output buffer.
    pub fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.output.take() {
            self.last_output = byte;
        }
        self.last_output
    }

    /// Writes port 0x60: the argument of a pending command, else a byte for the
    /// keyboard (none is attached, so it is dropped).
    pub fn write_data(&mut self, value: u8) {
        self.last_write_was_command = false;
        match core::mem::replace(&mut self.pending, Pending::Keyboard) {
            Pending::WriteRam(index) => self.ram[usize::from(index)] = value,
            Pending::WriteOutputPort => {
                self.a20 = value & output_port::A20 != 0;
                if value & output_port::RESET_N == 0 {
                    self.reset_request = true;
                }
            }
            Pending::KbdLoop => self.respond(value, false),
            Pending::AuxLoop => self.respond(value, true),
            // No mouse and no keyboard: nobody answers.
            Pending::AuxSend | Pending::Keyboard => {}
        }
    }

    /// Writes port 0x64: a controller command.
    pub fn write_command(&mut self, value: u8) {
        self.last_write_was_command = true;
        // A new command abandons one still waiting for its data byte.
        self.pending = Pending::Keyboard;
        match value {
            0x20..=0x3F => self.respond(self.ram[usize::from(value & 0x1F)], false),
            0x60..=0x7F => self.pending = Pending::WriteRam(value & 0x1F),
            cmd::AUX_DISABLE => self.ram[0] |= ctr::AUX_DISABLE,
            cmd::AUX_ENABLE => self.ram[0] &= !ctr::AUX_DISABLE,
            // Interface tests: 0x00 is "no error".
            cmd::AUX_TEST | cmd::KBD_TEST => self.respond(0x00, false),
            cmd::SELF_TEST => {
                self.ram[0] |= ctr::SYS;
                self.respond(0x55, false);
            }
            cmd::KBD_DISABLE => self.ram[0] |= ctr::KBD_DISABLE,
            cmd::KBD_ENABLE => self.ram[0] &= !ctr::KBD_DISABLE,
            // Input port: bit 7 keyboard not inhibited, bit 5 no manufacturing jumper,
            // bit 4 more than 256 KiB of RAM on the system board.
            cmd::READ_INPUT_PORT => self.respond(0xB0, false),
            cmd::READ_OUTPUT_PORT => self.respond(self.output_port(), false),
            cmd::WRITE_OUTPUT_PORT => self.pending = Pending::WriteOutputPort,
            cmd::KBD_LOOP => self.pending = Pending::KbdLoop,
            cmd::AUX_LOOP => self.pending = Pending::AuxLoop,
            cmd::AUX_SEND => self.pending = Pending::AuxSend,
            cmd::A20_DISABLE => self.a20 = false,
            cmd::A20_ENABLE => self.a20 = true,
            // Test inputs: keyboard clock and data, both low-active idle.
            cmd::READ_TEST_INPUTS => self.respond(0x00, false),
            // Pulse output port bits 3:0 low where the command's bits are 0; bit 0 is
            // the reset line (0xFF pulses nothing).
            0xF0..=0xFF if value & 1 == 0 => self.reset_request = true,
            // Unknown commands are ignored, like the real firmware does.
            _ => {}
        }
    }

    /// A byte read from `port` (0x60 or 0x64); other ports read 0xFF.
    pub fn read_port(&mut self, port: u16) -> u8 {
        match port {
            DATA_PORT => self.read_data(),
            COMMAND_PORT => self.status(),
            _ => 0xFF,
        }
    }

    /// A byte written to `port` (0x60 or 0x64); other ports are ignored.
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            DATA_PORT => self.write_data(value),
            COMMAND_PORT => self.write_command(value),
            _ => {}
        }
    }

    /// One port-I/O exit at absolute `port` (the controller decodes two separate
    /// ports, so one map entry per port names this device); wide accesses become byte
    /// accesses at consecutive ports.
    pub fn port_io(&mut self, port: u16, size: u8, write: bool, value: u32) -> u32 {
        if write {
            write_bytewise(port, size, value, |p, b| self.write_port(p, b));
            0
        } else {
            read_bytewise(port, size, |p| self.read_port(p))
        }
    }

    /// Whether the guest pulsed the CPU reset line since the last call. The VMM
    /// restarts or stops the VM.
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_request)
    }

    /// The IRQ 1 line: keyboard-side data waits and CTR enables its interrupt.
    pub fn kbd_irq_level(&self) -> bool {
        matches!(self.output, Some((_, false))) && self.ctr() & ctr::KBD_INT != 0
    }

    /// The IRQ 12 line: auxiliary data waits and CTR enables its interrupt.
    pub fn aux_irq_level(&self) -> bool {
        matches!(self.output, Some((_, true))) && self.ctr() & ctr::AUX_INT != 0
    }

    /// The controller command byte.
    pub fn ctr(&self) -> u8 {
        self.ram[0]
    }

    /// The A20 gate as the guest last set it through this controller.
    pub fn a20_enabled(&self) -> bool {
        self.a20
    }

    fn respond(&mut self, byte: u8, aux: bool) {
        // One byte of buffer, as on the chip; a new response replaces an unread one.
        self.output = Some((byte, aux));
    }

    fn output_port(&self) -> u8 {
        let mut value = output_port::RESET_N | output_port::KBD_LINES;
        if self.a20 {
            value |= output_port::A20;
        }
        match self.output {
            Some((_, false)) => value |= output_port::KBD_OBF,
            Some((_, true)) => value |= output_port::AUX_OBF,
            None => {}
        }
        value
    }
}

/// System Control Port A (port 0x92, "fast A20 and init"): bit 0 resets the CPU on a
/// 0 -> 1 transition, bit 1 is the alternate A20 gate. Intel PIIX3 datasheet (order
/// no. 290550), port 92h. As with the keyboard controller, A20 is recorded only.
#[derive(Clone, Debug)]
pub struct SystemControlA {
    value: u8,
    reset_request: bool,
}

impl Default for SystemControlA {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemControlA {
    /// Fast reset bit clear, A20 enabled (as a BIOS leaves it).
    pub const fn new() -> Self {
        Self {
            value: Self::A20,
            reset_request: false,
        }
    }

    const RESET: u8 = 1 << 0;
    const A20: u8 = 1 << 1;

    /// Whether the guest asked for a reset since the last call.
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_request)
    }

    pub fn a20_enabled(&self) -> bool {
        self.value & Self::A20 != 0
    }
}

impl PortDevice for SystemControlA {
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        read_bytewise(offset, size, |off| if off == 0 { self.value } else { 0xFF })
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) {
        write_bytewise(offset, size, value, |off, byte| {
            if off == 0 {
                if byte & Self::RESET != 0 && self.value & Self::RESET == 0 {
                    self.reset_request = true;
                }
                self.value = byte;
            }
        });
    }
}

impl I8042 {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"i8042kbc";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The internal RAM (the CTR first), the output buffer and the byte the data
    /// port latches, the command waiting for its data byte, the last write's port,
    /// the A20 gate and a reset request not yet taken, in the format of
    /// [`crate::state`].
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.raw(&self.ram);
        let (byte, aux) = self.output.unwrap_or((0, false));
        w.bool(self.output.is_some());
        w.u8(byte);
        w.bool(aux);
        w.u8(self.last_output);
        w.bool(self.last_write_was_command);
        let (kind, index) = match self.pending {
            Pending::Keyboard => (0, 0),
            Pending::WriteRam(i) => (1, i),
            Pending::WriteOutputPort => (2, 0),
            Pending::KbdLoop => (3, 0),
            Pending::AuxLoop => (4, 0),
            Pending::AuxSend => (5, 0),
        };
        w.u8(kind);
        w.u8(index);
        w.bool(self.a20);
        w.bool(self.reset_request);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let ram = r.array::<32>()?;
        let full = r.bool()?;
        let (byte, aux) = (r.u8()?, r.bool()?);
        r.check(
            full || (byte, aux) == (0, false),
            "absent output stored as non-zero",
        )?;
        let last_output = r.u8()?;
        let last_write_was_command = r.bool()?;
        let (kind, index) = (r.u8()?, r.u8()?);
        r.check(kind == 1 || index == 0, "pending command's RAM index")?;
        let pending = match kind {
            0 => Pending::Keyboard,
            1 if index < 32 => Pending::WriteRam(index),
            2 => Pending::WriteOutputPort,
            3 => Pending::KbdLoop,
            4 => Pending::AuxLoop,
            5 => Pending::AuxSend,
            _ => return Err(r.invalid("pending command")),
        };
        let a20 = r.bool()?;
        let reset_request = r.bool()?;
        r.end()?;
        *self = I8042 {
            ram,
            output: full.then_some((byte, aux)),
            last_output,
            last_write_was_command,
            pending,
            a20,
            reset_request,
        };
        Ok(())
    }
}

impl SystemControlA {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"port92  ";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The port's value and a reset request not yet taken.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u8(self.value);
        w.bool(self.reset_request);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let value = r.u8()?;
        let reset_request = r.bool()?;
        r.end()?;
        *self = SystemControlA {
            value,
            reset_request,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's `i8042_command` for a command with one argument out and/or one
    /// response byte in, polling the status register as `i8042_wait_write/read` do.
    fn command(kbc: &mut I8042, command: u8, arg: Option<u8>, response: bool) -> Option<u8> {
        assert_eq!(kbc.read_port(0x64) & status::IBF, 0);
        kbc.write_port(0x64, command);
        if let Some(arg) = arg {
            assert_eq!(kbc.read_port(0x64) & status::IBF, 0);
            kbc.write_port(0x60, arg);
        }
        if !response {
            return None;
        }
        (kbc.read_port(0x64) & status::OBF != 0).then(|| kbc.read_port(0x60))
    }

    #[test]
    fn linux_probe_sequence() {
        let mut kbc = I8042::new();
        // i8042_controller_check / i8042_flush: an empty buffer, not a missing chip.
        let st = kbc.read_port(0x64);
        assert_ne!(st, 0xFF);
        assert_eq!(st & status::OBF, 0);
        assert_ne!(st & status::UNLOCKED, 0);
        // i8042_controller_selftest.
        assert_eq!(command(&mut kbc, cmd::SELF_TEST, None, true), Some(0x55));
        assert_ne!(kbc.status() & status::SYS, 0);
        // i8042_controller_init: two equal CTR reads, then write it back modified.
        let ctr1 = command(&mut kbc, cmd::READ_CTR, None, true).unwrap();
        let ctr2 = command(&mut kbc, cmd::READ_CTR, None, true).unwrap();
        assert_eq!(ctr1, ctr2);
        assert_eq!(ctr1, ctr::BIOS_DEFAULT);
        let new = (ctr1 | ctr::KBD_DISABLE) & !ctr::KBD_INT;
        command(&mut kbc, cmd::WRITE_CTR, Some(new), false);
        assert_eq!(command(&mut kbc, cmd::READ_CTR, None, true), Some(new));
        // i8042_check_aux: AUX loopback echoes, the AUX port can be toggled.
        let echo = command(&mut kbc, cmd::AUX_LOOP, Some(0x5A), false);
        assert_eq!(echo, None);
        let st = kbc.read_port(0x64);
        assert_eq!(
            st & (status::OBF | status::AUX_DATA),
            status::OBF | status::AUX_DATA
        );
        assert_eq!(kbc.read_port(0x60), 0x5A);
        command(&mut kbc, cmd::AUX_DISABLE, None, false);
        let value = command(&mut kbc, cmd::READ_CTR, None, true).unwrap();
        assert_ne!(value & ctr::AUX_DISABLE, 0);
        command(&mut kbc, cmd::AUX_ENABLE, None, false);
        let value = command(&mut kbc, cmd::READ_CTR, None, true).unwrap();
        assert_eq!(value & ctr::AUX_DISABLE, 0);
        // The AUX IRQ test: with AUX_INT set, the loopback byte raises IRQ 12.
        command(&mut kbc, cmd::WRITE_CTR, Some(value | ctr::AUX_INT), false);
        assert!(!kbc.aux_irq_level());
        command(&mut kbc, cmd::AUX_LOOP, Some(0xA5), false);
        assert!(kbc.aux_irq_level());
        assert!(!kbc.kbd_irq_level());
        assert_eq!(kbc.read_port(0x60), 0xA5);
        assert!(!kbc.aux_irq_level());
        // i8042_set_mux_mode: the third byte (0xA4) comes back unchanged, so no MUX.
        for byte in [0xF0, 0x56, 0xA4] {
            kbc.write_port(0x64, cmd::AUX_LOOP);
            kbc.write_port(0x60, byte);
            assert_eq!(kbc.read_port(0x60), byte);
        }
        // Interface tests.
        assert_eq!(command(&mut kbc, cmd::KBD_TEST, None, true), Some(0x00));
        assert_eq!(command(&mut kbc, cmd::AUX_TEST, None, true), Some(0x00));
        // Keyboard enable/disable show in the CTR.
        command(&mut kbc, cmd::KBD_ENABLE, None, false);
        assert_eq!(kbc.ctr() & ctr::KBD_DISABLE, 0);
        command(&mut kbc, cmd::KBD_DISABLE, None, false);
        assert_ne!(kbc.ctr() & ctr::KBD_DISABLE, 0);
        // A byte for the (absent) keyboard gets no answer.
        kbc.write_port(0x60, 0xF2);
        assert_eq!(kbc.read_port(0x64) & status::OBF, 0);
        assert!(!kbc.take_reset_request());
    }

    #[test]
    fn keyboard_irq_follows_the_output_buffer() {
        let mut kbc = I8042::new();
        // The BIOS CTR has KBD_INT: a command response raises IRQ 1.
        kbc.write_port(0x64, cmd::READ_CTR);
        assert!(kbc.kbd_irq_level());
        kbc.read_port(0x60);
        assert!(!kbc.kbd_irq_level());
        // Keyboard loopback.
        kbc.write_port(0x64, cmd::KBD_LOOP);
        kbc.write_port(0x60, 0x1C);
        assert!(kbc.kbd_irq_level());
        assert_eq!(kbc.status() & status::AUX_DATA, 0);
        assert_eq!(kbc.read_port(0x60), 0x1C);
        // An empty buffer rereads the last byte.
        assert_eq!(kbc.read_port(0x60), 0x1C);
    }

    #[test]
    fn reset_pulse_commands() {
        let mut kbc = I8042::new();
        // Linux's BOOT_KBD: outb(0xfe, 0x64).
        kbc.write_port(0x64, cmd::RESET);
        assert!(kbc.take_reset_request());
        assert!(!kbc.take_reset_request());
        // Any pulse command with bit 0 clear resets; 0xFF (and odd ones) do not.
        for value in 0xF0..=0xFFu8 {
            kbc.write_port(0x64, value);
            assert_eq!(kbc.take_reset_request(), value & 1 == 0, "{value:#x}");
        }
        // Writing the output port with the reset bit clear also resets.
        kbc.write_port(0x64, cmd::WRITE_OUTPUT_PORT);
        kbc.write_port(0x60, 0xDF); // A20 on, reset line high: the usual A20 enable
        assert!(!kbc.take_reset_request());
        assert!(kbc.a20_enabled());
        kbc.write_port(0x64, cmd::WRITE_OUTPUT_PORT);
        kbc.write_port(0x60, 0xDC);
        assert!(kbc.take_reset_request());
        assert!(!kbc.a20_enabled());
    }

    #[test]
    fn output_port_and_a20_commands() {
        let mut kbc = I8042::new();
        kbc.write_port(0x64, cmd::READ_OUTPUT_PORT);
        // Reset line high, A20 on, idle keyboard lines; sampled before the response
        // fills the buffer, so neither OBF bit.
        assert_eq!(kbc.read_port(0x60), 0xC3);
        kbc.write_port(0x64, cmd::A20_DISABLE);
        assert!(!kbc.a20_enabled());
        kbc.write_port(0x64, cmd::A20_ENABLE);
        assert!(kbc.a20_enabled());
        kbc.write_port(0x64, cmd::READ_INPUT_PORT);
        assert_eq!(kbc.read_port(0x60), 0xB0);
        kbc.write_port(0x64, cmd::READ_TEST_INPUTS);
        assert_eq!(kbc.read_port(0x60), 0x00);
    }

    #[test]
    fn internal_ram_and_status_bits() {
        let mut kbc = I8042::new();
        kbc.write_port(0x64, 0x65);
        assert_ne!(kbc.status() & status::CMD, 0);
        kbc.write_port(0x60, 0x99);
        assert_eq!(kbc.status() & status::CMD, 0);
        kbc.write_port(0x64, 0x25);
        assert_eq!(kbc.read_port(0x60), 0x99);
        // Clearing CTR.SYS clears the status system flag.
        kbc.write_port(0x64, cmd::WRITE_CTR);
        kbc.write_port(0x60, 0x00);
        assert_eq!(kbc.status() & status::SYS, 0);
        // A command interrupts a pending argument: the data byte then goes to the
        // keyboard (nowhere) and the CTR is untouched.
        kbc.write_port(0x64, cmd::WRITE_CTR);
        kbc.write_port(0x64, cmd::KBD_TEST);
        assert_eq!(kbc.read_port(0x60), 0x00);
        kbc.write_port(0x60, 0x47);
        assert_eq!(kbc.ctr(), 0x00);
        assert_eq!(kbc.port_io(0x61, 1, false, 0), 0xFF);
        assert_eq!(kbc.port_io(0x64, 1, false, 0), u32::from(status::UNLOCKED));
    }

    #[test]
    fn system_control_a() {
        let mut port = SystemControlA::new();
        assert!(port.a20_enabled());
        assert_eq!(port.read(0, 1), 0x02);
        port.write(0, 1, 0x00);
        assert!(!port.a20_enabled());
        assert!(!port.take_reset_request());
        // Fast reset on the 0 -> 1 transition of bit 0.
        port.write(0, 1, 0x03);
        assert!(port.take_reset_request());
        port.write(0, 1, 0x03);
        assert!(!port.take_reset_request());
        port.write(0, 1, 0x02);
        port.write(0, 1, 0x01);
        assert!(port.take_reset_request());
        assert_eq!(port.read(0, 2), 0xFF01);
    }

    crate::state::testing::snap_impl!(I8042, SystemControlA);

    /// A random guest access; returns what the guest and the interrupt lines show.
    fn random_op(kbc: &mut I8042, rng: &mut crate::state::testing::Rng) -> (u32, bool, bool, bool) {
        let port = if rng.chance(2) { 0x60 } else { 0x64 };
        let v = if rng.chance(2) {
            kbc.port_io(port, 1, false, 0)
        } else {
            // Commands from the interesting range mostly; never the reset pulse,
            // which is tested apart.
            let mut b = rng.byte();
            if port == 0x64 && b >= 0xF0 {
                b = cmd::AUX_LOOP;
            }
            kbc.port_io(port, 1, true, b.into())
        };
        (
            v,
            kbc.kbd_irq_level(),
            kbc.aux_irq_level(),
            kbc.take_reset_request(),
        )
    }

    /// Linux's probe half done: AUX enabled and its interrupt on, a loopback
    /// answer (auxiliary data) unread, a CTR write waiting for its byte, A20 off.
    fn busy_kbc() -> I8042 {
        let mut kbc = I8042::new();
        command(&mut kbc, cmd::WRITE_CTR, Some(0x47), false);
        command(&mut kbc, cmd::AUX_ENABLE, None, false);
        command(&mut kbc, cmd::A20_DISABLE, None, false);
        command(&mut kbc, 0x65, Some(0x12), false); // RAM byte 5
        kbc.write_port(0x64, cmd::AUX_LOOP);
        kbc.write_port(0x60, 0x5A);
        kbc.write_port(0x64, cmd::WRITE_CTR + 9);
        kbc
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let mut a = busy_kbc();
        let snap = a.state();
        assert_eq!(&snap[..8], b"i8042kbc");
        let mut b = I8042::new();
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert!(b.aux_irq_level() && !b.a20_enabled());
        assert_eq!(b.read_port(0x60), 0x5A);
        assert_eq!(a.read_port(0x60), 0x5A);
        // The pending RAM write takes the next data byte.
        for k in [&mut a, &mut b] {
            k.write_port(0x60, 0x77);
            k.write_port(0x64, 0x29);
            assert_eq!(k.read_port(0x60), 0x77);
        }
        crate::state::testing::lockstep(&mut a, &mut b, 14, random_op);
        assert_eq!(a.state(), b.state());
        // A reset request not yet taken by the VMM is part of the state.
        a.write_port(0x64, cmd::RESET);
        let mut c = I8042::new();
        c.restore(&a.state()).unwrap();
        assert!(c.take_reset_request());
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let snap = busy_kbc().state();
        crate::state::testing::check_refusals(&mut I8042::new(), &snap, |d| {
            let mut rng = crate::state::testing::Rng::new(15);
            for _ in 0..60 {
                random_op(d, &mut rng);
            }
        });
        let mut port = SystemControlA::new();
        port.write(0, 1, 0x01);
        let snap = port.state();
        let mut fresh = SystemControlA::new();
        fresh.restore(&snap).unwrap();
        assert!(!fresh.a20_enabled());
        assert!(fresh.take_reset_request());
        crate::state::testing::check_refusals(&mut fresh, &snap, |d| {
            d.write(0, 1, 0x03);
            d.read(0, 1);
        });
    }
}
