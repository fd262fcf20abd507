//! The register protocols (ATA-7 v2: device selection, software reset, PIO data-in,
//! PIO data-out, non-data) and the disk the rest of the hypervisor sees: 512-byte
//! sectors, bounds-checked, at most [`MAX_SECTORS_PER_COMMAND`] per command.
//!
//! Every wait polls Alternate Status (reading it has no side effects) under a time
//! limit from [`Clock`]; a command that ends with ERR or DF set is reported with the
//! Error register. The device's interrupt stays masked (nIEN) throughout.

use crate::identify::Identity;
use crate::regs::{command, control, offset, signature, status, DEVICE_LBA, DEVICE_OBSOLETE};
use crate::{Channel, Clock, Drive, Error, Ports, SECTOR_SIZE};

/// Sectors per READ/WRITE SECTORS EXT: the 48-bit count allows 65,536, but a
/// shorter command keeps the channel's lock short for the other users of the disk.
pub const MAX_SECTORS_PER_COMMAND: usize = 256;

/// The driver's time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// BSY after a software reset: device 0 may take up to 31 s (ATA-7 v2, the
    /// software reset protocol).
    pub reset_ms: u64,
    /// Each data block, the device selection, IDENTIFY DEVICE.
    pub command_ms: u64,
    /// FLUSH CACHE EXT, which writes a whole cache to the media.
    pub flush_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            reset_ms: 31_000,
            command_ms: 10_000,
            flush_ms: 30_000,
        }
    }
}

/// The channel's registers, the clock and the limits, borrowed for one protocol.
struct Io<'a, P: Ports, C: Clock> {
    ports: &'a mut P,
    clock: &'a mut C,
    channel: Channel,
    timeouts: Timeouts,
}

impl<P: Ports, C: Clock> Io<'_, P, C> {
    fn alt_status(&mut self) -> u8 {
        self.ports.read8(self.channel.control)
    }

    fn write_reg(&mut self, off: u16, value: u8) {
        self.ports.write8(self.channel.reg(off), value);
    }

    fn read_reg(&mut self, off: u16) -> u8 {
        self.ports.read8(self.channel.reg(off))
    }

    /// The 400 ns the host waits after writing Command or Device before Status is
    /// valid (ATA-7 v2): four reads of Alternate Status, each an I/O cycle of at
    /// least 100 ns on a legacy bus.
    fn settle(&mut self) {
        for _ in 0..4 {
            self.alt_status();
        }
    }

    /// Polls Alternate Status until `done` holds for it; returns it.
    fn wait(
        &mut self,
        what: &'static str,
        limit_ms: u64,
        done: impl Fn(u8) -> bool,
    ) -> Result<u8, Error> {
        let start = self.clock.now_us();
        loop {
            let st = self.alt_status();
            if done(st) {
                return Ok(st);
            }
            let waited = self.clock.now_us().saturating_sub(start);
            if waited >= limit_ms * 1000 {
                return Err(Error::Timeout {
                    what,
                    waited_ms: waited / 1000,
                    status: st,
                });
            }
            self.clock.relax();
        }
    }

    fn busy_wait_us(&mut self, us: u64) {
        let start = self.clock.now_us();
        while self.clock.now_us().saturating_sub(start) < us {
            self.clock.relax();
        }
    }

    /// The command's failure from Status `st` and the Error register.
    fn failure(&mut self, command: u8, st: u8) -> Error {
        Error::Command {
            command,
            status: st,
            error: self.read_reg(offset::ERROR),
        }
    }

    /// Device selection (ATA-7 v2): BSY and DRQ clear, write Device, wait 400 ns,
    /// BSY and DRQ clear again (now the selected device's). Writes nIEN first, so
    /// no command runs with the device's interrupt unmasked, whoever (firmware, an
    /// earlier owner) set Device Control last.
    fn select(&mut self, drive: Drive, lba: bool) -> Result<(), Error> {
        self.ports.write8(self.channel.control, control::NIEN);
        let idle = |s: u8| s & (status::BSY | status::DRQ) == 0;
        let limit = self.timeouts.command_ms;
        self.wait(
            "the channel to be idle before selecting a device",
            limit,
            idle,
        )?;
        let lba_bit = if lba { DEVICE_LBA } else { 0 };
        self.write_reg(offset::DEVICE, DEVICE_OBSOLETE | lba_bit | drive.dev_bit());
        self.settle();
        if self.alt_status() == 0xFF {
            // A floating bus: no device drives the status lines.
            return Err(Error::NoDevice { status: 0xFF });
        }
        self.wait("the selected device to be idle", limit, idle)?;
        Ok(())
    }

    /// Writes a 48-bit LBA and a sector count (high-order bytes first, ATA-7 v2
    /// "48-bit addressing") and the command.
    fn issue_ext(&mut self, drive: Drive, cmd: u8, lba: u64, count: u16) -> Result<(), Error> {
        self.select(drive, true)?;
        let [b0, b1, b2, b3, b4, b5, _, _] = lba.to_le_bytes();
        let [c0, c1] = count.to_le_bytes();
        self.write_reg(offset::COUNT, c1);
        self.write_reg(offset::LBA_LOW, b3);
        self.write_reg(offset::LBA_MID, b4);
        self.write_reg(offset::LBA_HIGH, b5);
        self.write_reg(offset::COUNT, c0);
        self.write_reg(offset::LBA_LOW, b0);
        self.write_reg(offset::LBA_MID, b1);
        self.write_reg(offset::LBA_HIGH, b2);
        self.write_reg(offset::COMMAND, cmd);
        self.settle();
        Ok(())
    }

    /// Waits for the next data block of `cmd`: BSY clear and DRQ set; ERR or DF
    /// end the command.
    fn await_block(&mut self, cmd: u8, what: &'static str) -> Result<(), Error> {
        let limit = self.timeouts.command_ms;
        let st = self.wait(what, limit, |s| {
            s & status::BSY == 0 && s & (status::DRQ | status::ERR | status::DF) != 0
        })?;
        if st & (status::ERR | status::DF) != 0 {
            return Err(self.failure(cmd, st));
        }
        Ok(())
    }

    /// The end of a command: BSY clear; ERR or DF, or DRQ still set (the device
    /// wants to move more data than the driver did), are failures. Reads Status
    /// itself at the end, which clears any interrupt the device had pending.
    fn finish(&mut self, cmd: u8, what: &'static str, limit_ms: u64) -> Result<(), Error> {
        let st = self.wait(what, limit_ms, |s| s & status::BSY == 0)?;
        let _ = self.read_reg(offset::STATUS);
        if st & (status::ERR | status::DF) != 0 {
            return Err(self.failure(cmd, st));
        }
        if st & status::DRQ != 0 {
            return Err(Error::DataLeft {
                command: cmd,
                status: st,
            });
        }
        Ok(())
    }

    fn read_block(&mut self, out: &mut [u8]) {
        let data = self.channel.reg(offset::DATA);
        for pair in out.as_chunks_mut::<2>().0 {
            *pair = self.ports.read16(data).to_le_bytes();
        }
    }

    fn write_block(&mut self, bytes: &[u8]) {
        let data = self.channel.reg(offset::DATA);
        for pair in bytes.as_chunks::<2>().0 {
            self.ports.write16(data, u16::from_le_bytes(*pair));
        }
    }
}

/// Software reset of `channel` (ATA-7 v2, the software reset protocol): SRST set
/// for at least 5 us, cleared, 2 ms, then BSY must clear. Leaves nIEN set (the
/// driver polls) and device 0 selected. A bus whose status floats (FFh) has no
/// controller or no devices: [`Error::NoDevice`].
pub fn reset_channel<P: Ports, C: Clock>(
    ports: &mut P,
    clock: &mut C,
    channel: Channel,
    timeouts: Timeouts,
) -> Result<(), Error> {
    let mut io = Io {
        ports,
        clock,
        channel,
        timeouts,
    };
    let st = io.alt_status();
    if st == 0xFF {
        return Err(Error::NoDevice { status: st });
    }
    io.ports
        .write8(channel.control, control::SRST | control::NIEN);
    io.busy_wait_us(5);
    io.ports.write8(channel.control, control::NIEN);
    io.busy_wait_us(2000);
    let st = io.wait(
        "BSY to clear after the software reset",
        timeouts.reset_ms,
        |s| s & status::BSY == 0,
    )?;
    if st == 0xFF {
        return Err(Error::NoDevice { status: st });
    }
    Ok(())
}

/// IDENTIFY DEVICE on `drive` (ACS, IDENTIFY DEVICE; PIO data-in). A device that
/// does not answer is [`Error::NoDevice`]; one whose signature (in LBA Mid/High once
/// BSY clears, or after it aborted the command) is a packet device's is
/// [`Error::NotAta`].
pub fn identify_device<P: Ports, C: Clock>(
    ports: &mut P,
    clock: &mut C,
    channel: Channel,
    drive: Drive,
    timeouts: Timeouts,
) -> Result<Identity, Error> {
    let mut io = Io {
        ports,
        clock,
        channel,
        timeouts,
    };
    io.select(drive, false)?;
    io.write_reg(offset::COUNT, 0);
    io.write_reg(offset::LBA_LOW, 0);
    io.write_reg(offset::LBA_MID, 0);
    io.write_reg(offset::LBA_HIGH, 0);
    io.write_reg(offset::COMMAND, command::IDENTIFY_DEVICE);
    io.settle();
    let st = io.read_reg(offset::STATUS);
    if st == 0 || st == 0xFF {
        return Err(Error::NoDevice { status: st });
    }
    let st = io.wait(
        "BSY to clear after IDENTIFY DEVICE",
        timeouts.command_ms,
        |s| s & status::BSY == 0,
    )?;
    let sig = (io.read_reg(offset::LBA_MID), io.read_reg(offset::LBA_HIGH));
    let kind = match sig {
        signature::ATA | signature::SATA => None,
        signature::ATAPI => Some("ATAPI"),
        signature::SATAPI => Some("SATA ATAPI"),
        _ => Some("unknown"),
    };
    if let Some(kind) = kind {
        return Err(Error::NotAta {
            kind,
            mid: sig.0,
            high: sig.1,
        });
    }
    if st & (status::ERR | status::DF) != 0 {
        return Err(io.failure(command::IDENTIFY_DEVICE, st));
    }
    io.await_block(command::IDENTIFY_DEVICE, "IDENTIFY DEVICE data (DRQ)")?;
    let mut bytes = [0u8; SECTOR_SIZE];
    io.read_block(&mut bytes);
    io.finish(
        command::IDENTIFY_DEVICE,
        "the end of IDENTIFY DEVICE",
        timeouts.command_ms,
    )?;
    let mut words = [0u16; 256];
    for (w, pair) in words.iter_mut().zip(bytes.as_chunks::<2>().0) {
        *w = u16::from_le_bytes(*pair);
    }
    Identity::parse(&words)
}

/// What [`probe`] found on a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub master: Result<Identity, Error>,
    pub slave: Result<Identity, Error>,
}

/// Resets `channel` and identifies both of its devices. `Err` only when the reset
/// fails (nothing on the channel).
pub fn probe<P: Ports, C: Clock>(
    ports: &mut P,
    clock: &mut C,
    channel: Channel,
    timeouts: Timeouts,
) -> Result<Probe, Error> {
    reset_channel(ports, clock, channel, timeouts)?;
    Ok(Probe {
        master: identify_device(ports, clock, channel, Drive::Master, timeouts),
        slave: identify_device(ports, clock, channel, Drive::Slave, timeouts),
    })
}

/// One identified ATA disk: 512-byte sectors by 48-bit LBA.
pub struct Disk<P: Ports, C: Clock> {
    ports: P,
    clock: C,
    channel: Channel,
    drive: Drive,
    identity: Identity,
    timeouts: Timeouts,
}

impl<P: Ports, C: Clock> Disk<P, C> {
    /// The disk `drive` of `channel`, which [`identify_device`] (or [`probe`]) described
    /// as `identity`.
    pub fn new(
        ports: P,
        clock: C,
        channel: Channel,
        drive: Drive,
        identity: Identity,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            ports,
            clock,
            channel,
            drive,
            identity,
            timeouts,
        }
    }

    /// Identifies `drive` of `channel` and makes it a disk.
    pub fn open(
        mut ports: P,
        mut clock: C,
        channel: Channel,
        drive: Drive,
        timeouts: Timeouts,
    ) -> Result<Self, Error> {
        let identity = identify_device(&mut ports, &mut clock, channel, drive, timeouts)?;
        Ok(Self::new(ports, clock, channel, drive, identity, timeouts))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    pub fn drive(&self) -> Drive {
        self.drive
    }

    /// 512-byte sectors on the disk.
    pub fn sectors(&self) -> u64 {
        self.identity.sectors
    }

    fn io(&mut self) -> Io<'_, P, C> {
        Io {
            ports: &mut self.ports,
            clock: &mut self.clock,
            channel: self.channel,
            timeouts: self.timeouts,
        }
    }

    /// Checks a request of `len` bytes at sector `lba`; returns its sector count.
    fn check(&self, lba: u64, len: usize) -> Result<u64, Error> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::BufferLength(len));
        }
        let count = (len / SECTOR_SIZE) as u64;
        let sectors = self.sectors();
        match lba.checked_add(count) {
            Some(end) if end <= sectors => Ok(count),
            _ => Err(Error::OutOfRange {
                lba,
                count,
                sectors,
            }),
        }
    }

    /// Reads `buf.len() / 512` sectors starting at sector `lba` (READ SECTORS EXT,
    /// PIO data-in).
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check(lba, buf.len())?;
        let drive = self.drive;
        let limit = self.timeouts.command_ms;
        let cmd = command::READ_SECTORS_EXT;
        let mut at = lba;
        for chunk in buf.chunks_mut(MAX_SECTORS_PER_COMMAND * SECTOR_SIZE) {
            let count = (chunk.len() / SECTOR_SIZE) as u16;
            let mut io = self.io();
            io.issue_ext(drive, cmd, at, count)?;
            for block in chunk.as_chunks_mut::<SECTOR_SIZE>().0 {
                io.await_block(cmd, "READ SECTORS EXT data (DRQ)")?;
                io.read_block(block);
            }
            io.finish(cmd, "the end of READ SECTORS EXT", limit)?;
            at += u64::from(count);
        }
        Ok(())
    }

    /// Writes `data.len() / 512` sectors starting at sector `lba` (WRITE SECTORS
    /// EXT, PIO data-out). The data may sit in the device's write cache until
    /// [`Disk::flush`].
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), Error> {
        self.check(lba, data.len())?;
        let drive = self.drive;
        let limit = self.timeouts.command_ms;
        let cmd = command::WRITE_SECTORS_EXT;
        let mut at = lba;
        for chunk in data.chunks(MAX_SECTORS_PER_COMMAND * SECTOR_SIZE) {
            let count = (chunk.len() / SECTOR_SIZE) as u16;
            let mut io = self.io();
            io.issue_ext(drive, cmd, at, count)?;
            for block in chunk.as_chunks::<SECTOR_SIZE>().0 {
                io.await_block(cmd, "WRITE SECTORS EXT to take data (DRQ)")?;
                io.write_block(block);
            }
            io.finish(cmd, "the end of WRITE SECTORS EXT", limit)?;
            at += u64::from(count);
        }
        Ok(())
    }

    /// Commits the device's volatile write cache to the media (FLUSH CACHE EXT,
    /// non-data). Sent whatever word 82 says: a device without a cache completes
    /// it at once.
    pub fn flush(&mut self) -> Result<(), Error> {
        let drive = self.drive;
        let limit = self.timeouts.flush_ms;
        let mut io = self.io();
        io.select(drive, true)?;
        io.write_reg(offset::COMMAND, command::FLUSH_CACHE_EXT);
        io.settle();
        io.finish(
            command::FLUSH_CACHE_EXT,
            "FLUSH CACHE EXT to complete",
            limit,
        )
    }
}
