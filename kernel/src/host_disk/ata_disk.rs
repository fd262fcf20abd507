//! The host disk over ATA: the IDE channels of the host (a PCI IDE controller's,
//! in native mode at its I/O BARs or in compatibility mode at the legacy ports
//! 1F0h/3F6h and 170h/376h; the legacy ports alone when there is no PCI IDE
//! function), each reset and its devices identified by the `ata` crate.
//!
//! The disk chosen is the first ATA disk whose GPT (valid CRCs, `gptdisk`) holds at
//! least one partition of the hypervisor's type ([`gptdisk::HV_PARTITION_TYPE`]):
//! the boot disk (under Bochs the BIOS image with its MBR, under UEFI a GPT with
//! only an EFI system partition) and any other disk are never written.
//!
//! Guests never reach these ports: every guest port access exits to the hypervisor
//! (VMX I/O bitmaps and SVM's I/O permission map intercept all 65,536 ports) and is
//! served by the VM's own device models, where nothing decodes 1F0h-1F7h or 170h-177h
//! (they read all ones).

use alloc::vec::Vec;
use x86_64::instructions::port::Port;

use super::TscClock;
use crate::{pci, println};

pub type AtaDisk = ata::Disk<ChannelPorts, TscClock>;

/// Class 01h (mass storage), subclass 01h (IDE).
const IDE_CLASS: (u8, u8) = (0x01, 0x01);

/// The channels to probe: each PCI IDE function's two, in native mode at BARs 0-3
/// when its programming interface says so (bits 0 and 2, PCI IDE Controller
/// Specification 1.0, §2), else at the legacy ports; the legacy pair alone when no
/// PCI IDE function exists. Duplicates (two functions in compatibility mode) are
/// probed once.
fn channels() -> Vec<(&'static str, ata::Channel)> {
    let mut found: Vec<(&'static str, ata::Channel)> = Vec::new();
    let mut add = |name, c: ata::Channel| {
        if !found.iter().any(|(_, k)| *k == c) {
            found.push((name, c));
        }
    };
    let mut any = false;
    for f in pci::functions() {
        let (class, sub, prog_if) = f.class();
        if (class, sub) != IDE_CLASS {
            continue;
        }
        any = true;
        let native = |bit: u8, bar: u8| {
            (prog_if & (1 << bit) != 0)
                .then(|| ata::Channel::native(f.io_bar(bar)?, f.io_bar(bar + 1)?))
                .flatten()
        };
        let primary = native(0, 0);
        let secondary = native(2, 2);
        if primary.is_some() || secondary.is_some() {
            // Native mode decodes through the I/O BARs: I/O space on. Bus
            // mastering stays as it is: the driver moves data by PIO only.
            f.set_command(f.command() | pci::COMMAND_IO);
        }
        add("primary", primary.unwrap_or(ata::Channel::PRIMARY));
        add("secondary", secondary.unwrap_or(ata::Channel::SECONDARY));
    }
    if !any {
        add("primary", ata::Channel::PRIMARY);
        add("secondary", ata::Channel::SECONDARY);
    }
    found
}

/// Probes every channel, reports each ATA device found in one line, and returns
/// the first with the hypervisor's GPT.
pub(super) fn init() -> Option<AtaDisk> {
    let timeouts = ata::Timeouts::default();
    let mut chosen = None;
    for (name, channel) in channels() {
        let mut ports = ChannelPorts::new(channel);
        let probe = match ata::probe(&mut ports, &mut TscClock, channel, timeouts) {
            Ok(p) => p,
            // Nothing on the channel: not worth a line.
            Err(ata::Error::NoDevice { .. }) => continue,
            Err(e) => {
                println!(
                    "hv: ata: WARNING: {name} channel at {:#x}: {e}",
                    channel.command
                );
                continue;
            }
        };
        for (drive, result) in [
            (ata::Drive::Master, probe.master),
            (ata::Drive::Slave, probe.slave),
        ] {
            let where_ = alloc::format!("{name} {}", drive.name());
            let identity = match result {
                Ok(id) => id,
                Err(ata::Error::NoDevice { .. }) => continue,
                Err(e @ ata::Error::NotAta { .. }) => {
                    println!("hv: ata: {where_}: {e}; not used");
                    continue;
                }
                Err(e) => {
                    println!("hv: ata: WARNING: {where_}: {e}; not used");
                    continue;
                }
            };
            let line = alloc::format!(
                "hv: ata: {where_} {:?} serial {}, {} sectors of 512 bytes",
                identity.model,
                identity.serial,
                identity.sectors
            );
            let mut disk = ata::Disk::new(
                ChannelPorts::new(channel),
                TscClock,
                channel,
                drive,
                identity,
                timeouts,
            );
            if chosen.is_some() {
                println!("{line}: not used (a disk was chosen already)");
                continue;
            }
            match hv_partitions(&mut disk) {
                Ok(0) => println!("{line}: its GPT has no hv partition; not used"),
                Ok(n) => {
                    println!("{line}: GPT with {n} hv partition(s); the host disk");
                    chosen = Some(disk);
                }
                Err(why) => println!("{line}: {why}; not used"),
            }
        }
    }
    if chosen.is_none() {
        println!("hv: ata: no disk with the hypervisor's GPT found");
    }
    chosen
}

/// How many partitions of the hypervisor's type the disk's GPT has, or why it has
/// no usable GPT. Only reads.
fn hv_partitions(disk: &mut AtaDisk) -> Result<usize, alloc::string::String> {
    let sectors = disk.sectors();
    let mut read = |lba: u64, buf: &mut [u8; 512]| disk.read(lba, buf);
    let table = gptdisk::read_table(&mut read, sectors)
        .map_err(|e| alloc::format!("no usable GPT: {e}"))?;
    Ok(table
        .partitions
        .iter()
        .filter(|p| p.type_guid == gptdisk::HV_PARTITION_TYPE)
        .count())
}

/// Writes back the disk's write cache as the hypervisor stops.
pub(super) fn shutdown(disk: &mut AtaDisk) {
    match disk.flush() {
        Ok(()) => println!("hv: ata: write cache flushed"),
        Err(e) => println!("hv: ata: WARNING: flushing the write cache failed: {e}"),
    }
}

/// One IDE channel's ports: its eight command-block ports and its Alternate Status
/// / Device Control port, nothing else (an access elsewhere reads all ones and
/// writes nothing, so a driver bug cannot reach another device's ports).
pub struct ChannelPorts {
    channel: ata::Channel,
}

impl ChannelPorts {
    fn new(channel: ata::Channel) -> Self {
        Self { channel }
    }

    fn owns(&self, port: u16) -> bool {
        port == self.channel.control
            || port
                .checked_sub(self.channel.command)
                .is_some_and(|off| off < 8)
    }
}

impl ata::Ports for ChannelPorts {
    fn read8(&mut self, port: u16) -> u8 {
        if !self.owns(port) {
            return 0xFF;
        }
        // SAFETY: a register of the IDE channel this module probed (checked above);
        // reading one changes only the channel's own state (Status clears its
        // interrupt), and only the host disk's code, under its lock or at boot on
        // one processor, touches these ports.
        unsafe { Port::<u8>::new(port).read() }
    }

    fn write8(&mut self, port: u16, value: u8) {
        if self.owns(port) {
            // SAFETY: as in `read8`; the driver writes the registers ATA defines.
            unsafe { Port::<u8>::new(port).write(value) }
        }
    }

    fn read16(&mut self, port: u16) -> u16 {
        if !self.owns(port) {
            return 0xFFFF;
        }
        // SAFETY: as in `read8` (the Data register).
        unsafe { Port::<u16>::new(port).read() }
    }

    fn write16(&mut self, port: u16, value: u16) {
        if self.owns(port) {
            // SAFETY: as in `read8` (the Data register).
            unsafe { Port::<u16>::new(port).write(value) }
        }
    }
}
