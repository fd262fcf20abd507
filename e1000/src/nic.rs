//! The driver proper: bring-up, the two rings, and the counters.

use core::fmt;

use crate::desc;
use crate::regs::*;
use crate::{Clock, Dma, Registers, PAGE_SIZE};

/// Receive descriptors: RDLEN must be a multiple of 128 bytes (8254x SDM §3.2.6),
/// and 64 of them (1 KiB) fit one page with room to spare.
pub const RX_ENTRIES: usize = 64;
/// Transmit descriptors (TDLEN has the same rule, §3.4).
pub const TX_ENTRIES: usize = 64;
/// Every buffer, receive and transmit: RCTL.BSIZE = 00 (§13.4.22).
pub const BUFFER_BYTES: usize = 2048;
/// The largest frame sent or accepted, without the CRC: 1514 bytes plus an 802.1Q
/// tag.
pub const MAX_FRAME: usize = 1518;
/// The smallest frame sent: an Ethernet header (the device pads to 64 bytes,
/// TCTL.PSP).
pub const MIN_FRAME: usize = 14;

const RESET_TIMEOUT_US: u64 = 10_000;
const EEPROM_TIMEOUT_US: u64 = 10_000;

/// Which register layout the part has where the family differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// 82540EM and relatives (QEMU `e1000`): EERD done bit 4, address at bit 8.
    I8254x,
    /// 82574L (QEMU `e1000e`): EERD done bit 1, address at bit 2.
    I82574,
}

/// Why bring-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Registers read all ones: no device behind the BAR.
    NoDevice,
    /// CTRL.RST did not clear within 10 ms.
    ResetTimeout,
    /// Neither Receive Address 0 nor the EEPROM gave a unicast, non-zero MAC.
    NoMac,
    /// DMA memory for the rings and buffers was not available.
    OutOfMemory,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::NoDevice => "the registers read all ones (no device)",
            Error::ResetTimeout => "the device reset did not complete within 10 ms",
            Error::NoMac => "no valid MAC address in Receive Address 0 or the EEPROM",
            Error::OutOfMemory => "out of DMA memory for the descriptor rings",
        })
    }
}

/// Why a frame was not queued for transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// Every descriptor is still owned by the device.
    RingFull,
    /// Over [`MAX_FRAME`] bytes.
    TooLarge,
    /// Under [`MIN_FRAME`] bytes.
    TooShort,
}

/// The driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Descriptors written back with error bits (§3.2.3.2).
    pub rx_errors: u64,
    /// Frames whose written-back length was 0 or beyond the buffer.
    pub rx_bad_length: u64,
    /// Frames spread over more than one descriptor (not expected with 2 KiB buffers
    /// and RCTL.LPE off), dropped whole.
    pub rx_fragmented: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames refused because the ring was full.
    pub tx_ring_full: u64,
    /// Frames refused for their size.
    pub tx_bad_size: u64,
}

struct Memory {
    /// One page: the receive ring, then the transmit ring.
    rings: u64,
    rx_buffers: u64,
    tx_buffers: u64,
}

const RX_RING_OFFSET: u64 = 0;
const TX_RING_OFFSET: u64 = 2048;
const BUFFER_PAGES_RX: usize = RX_ENTRIES * BUFFER_BYTES / PAGE_SIZE;
const BUFFER_PAGES_TX: usize = TX_ENTRIES * BUFFER_BYTES / PAGE_SIZE;
const _: () = assert!(RX_ENTRIES * desc::SIZE <= TX_RING_OFFSET as usize);
const _: () = assert!(TX_RING_OFFSET as usize + TX_ENTRIES * desc::SIZE <= PAGE_SIZE);
const _: () = assert!(
    (RX_ENTRIES * desc::SIZE).is_multiple_of(128) && (TX_ENTRIES * desc::SIZE).is_multiple_of(128)
);

/// A running controller.
pub struct Nic<R: Registers, D: Dma> {
    regs: R,
    dma: D,
    model: Model,
    mac: [u8; 6],
    memory: Option<Memory>,
    /// The next receive descriptor the device completes.
    rx_next: usize,
    /// Inside a frame spread over several descriptors: drop until its EOP.
    rx_discarding: bool,
    /// The next free transmit descriptor (what TDT holds).
    tx_tail: usize,
    /// The oldest transmit descriptor not yet seen done.
    tx_clean: usize,
    stats: Stats,
}

impl<R: Registers, D: Dma> Nic<R, D> {
    /// Resets the controller and brings it up, polled (8254x SDM §14). On an error
    /// the device is left reset and every allocation given back.
    pub fn new(regs: R, dma: D, clock: &mut impl Clock, model: Model) -> Result<Self, Error> {
        let mut nic = Self {
            regs,
            dma,
            model,
            mac: [0; 6],
            memory: None,
            rx_next: 0,
            rx_discarding: false,
            tx_tail: 0,
            tx_clean: 0,
            stats: Stats::default(),
        };
        nic.bring_up(clock)?;
        Ok(nic)
    }

    fn bring_up(&mut self, clock: &mut impl Clock) -> Result<(), Error> {
        if self.regs.read32(STATUS) == u32::MAX {
            return Err(Error::NoDevice);
        }
        self.reset(clock)?;
        self.mac = self.read_mac(clock)?;
        // §14.3: link up with auto-speed detection; no link reset, no inverted
        // loss-of-signal, no PHY reset, VLAN tags left in the frames.
        let ctrl = self.regs.read32(CTRL);
        self.regs.write32(
            CTRL,
            (ctrl | CTRL_SLU | CTRL_ASDE) & !(CTRL_LRST | CTRL_ILOS | CTRL_PHY_RST | CTRL_VME),
        );
        for i in 0..MTA_ENTRIES {
            self.regs.write32(MTA + 4 * i, 0);
        }
        let memory = self.allocate()?;
        self.setup_rx(&memory);
        self.setup_tx(&memory);
        self.memory = Some(memory);
        Ok(())
    }

    /// Global reset (§13.4.1, CTRL.RST), then every interrupt masked and the
    /// pending causes read away: the driver polls.
    fn reset(&mut self, clock: &mut impl Clock) -> Result<(), Error> {
        self.regs.write32(IMC, u32::MAX);
        let ctrl = self.regs.read32(CTRL);
        self.regs.write32(CTRL, ctrl | CTRL_RST);
        let start = clock.now_us();
        while self.regs.read32(CTRL) & CTRL_RST != 0 {
            if clock.now_us().saturating_sub(start) > RESET_TIMEOUT_US {
                return Err(Error::ResetTimeout);
            }
            clock.relax();
        }
        self.regs.write32(IMC, u32::MAX);
        let _ = self.regs.read32(ICR);
        Ok(())
    }

    /// Receive Address 0 when it is marked valid, else EEPROM words 0-2 (§5.6.1:
    /// the Ethernet address, low byte first in each word).
    fn read_mac(&mut self, clock: &mut impl Clock) -> Result<[u8; 6], Error> {
        let high = self.regs.read32(RAH0);
        if high & RAH_AV != 0 {
            let low = self.regs.read32(RAL0).to_le_bytes();
            let mac = [
                low[0],
                low[1],
                low[2],
                low[3],
                high as u8,
                (high >> 8) as u8,
            ];
            if valid_mac(&mac) {
                return Ok(mac);
            }
        }
        let mut mac = [0u8; 6];
        for word in 0..3u32 {
            let value = self.eeprom_word(clock, word).ok_or(Error::NoMac)?;
            mac[2 * word as usize..][..2].copy_from_slice(&value.to_le_bytes());
        }
        if !valid_mac(&mac) {
            return Err(Error::NoMac);
        }
        // Receive Address 0 filters unicast frames (§13.5.2): program what was read.
        self.regs
            .write32(RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        self.regs
            .write32(RAH0, u32::from(mac[4]) | (u32::from(mac[5]) << 8) | RAH_AV);
        Ok(mac)
    }

    /// One EEPROM word through EERD (§13.4.4), or `None` on a time-out.
    fn eeprom_word(&mut self, clock: &mut impl Clock, word: u32) -> Option<u16> {
        let (shift, done) = match self.model {
            Model::I8254x => (EERD_ADDR_SHIFT_8254X, EERD_DONE_8254X),
            Model::I82574 => (EERD_ADDR_SHIFT_82574, EERD_DONE_82574),
        };
        self.regs.write32(EERD, (word << shift) | EERD_START);
        let start = clock.now_us();
        loop {
            let v = self.regs.read32(EERD);
            if v & done != 0 {
                return Some((v >> 16) as u16);
            }
            if clock.now_us().saturating_sub(start) > EEPROM_TIMEOUT_US {
                return None;
            }
            clock.relax();
        }
    }

    fn allocate(&mut self) -> Result<Memory, Error> {
        let rings = self.dma.alloc(1).ok_or(Error::OutOfMemory)?;
        let Some(rx_buffers) = self.dma.alloc(BUFFER_PAGES_RX) else {
            self.dma.free(rings, 1);
            return Err(Error::OutOfMemory);
        };
        let Some(tx_buffers) = self.dma.alloc(BUFFER_PAGES_TX) else {
            self.dma.free(rx_buffers, BUFFER_PAGES_RX);
            self.dma.free(rings, 1);
            return Err(Error::OutOfMemory);
        };
        Ok(Memory {
            rings,
            rx_buffers,
            tx_buffers,
        })
    }

    /// §14.4: ring base and length, head 0, every descriptor but one given to the
    /// device (tail = N - 1: head == tail means "no descriptors", §3.2.6), then
    /// RCTL: enabled, broadcasts accepted, 2 KiB buffers, CRC stripped, no long
    /// packets, and promiscuous for unicast and multicast: as a switch's uplink the
    /// NIC carries frames for the VMs' MACs, not its own (the filter of Receive
    /// Address 0 would drop them, §13.5.2).
    fn setup_rx(&mut self, m: &Memory) {
        for i in 0..RX_ENTRIES {
            let d = desc::rx(m.rx_buffers + (i * BUFFER_BYTES) as u64);
            self.dma
                .write(m.rings + RX_RING_OFFSET + (i * desc::SIZE) as u64, &d);
        }
        let base = m.rings + RX_RING_OFFSET;
        self.regs.write32(RDBAL, base as u32);
        self.regs.write32(RDBAH, (base >> 32) as u32);
        self.regs.write32(RDLEN, (RX_ENTRIES * desc::SIZE) as u32);
        self.regs.write32(RDH, 0);
        self.regs.write32(RDT, (RX_ENTRIES - 1) as u32);
        self.rx_next = 0;
        self.regs
            .write32(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC | RCTL_UPE | RCTL_MPE);
    }

    /// §14.5: ring base and length, head = tail = 0 (nothing to send), then TCTL
    /// (enabled, short frames padded, the recommended collision values) and TIPG.
    fn setup_tx(&mut self, m: &Memory) {
        let base = m.rings + TX_RING_OFFSET;
        self.regs.write32(TDBAL, base as u32);
        self.regs.write32(TDBAH, (base >> 32) as u32);
        self.regs.write32(TDLEN, (TX_ENTRIES * desc::SIZE) as u32);
        self.regs.write32(TDH, 0);
        self.regs.write32(TDT, 0);
        self.tx_tail = 0;
        self.tx_clean = 0;
        self.regs
            .write32(TCTL, TCTL_EN | TCTL_PSP | TCTL_CT | TCTL_COLD);
        self.regs.write32(TIPG, TIPG_COPPER);
    }

    /// The controller's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// Whether the link is up (STATUS.LU, §13.4.2).
    pub fn link_up(&mut self) -> bool {
        let s = self.regs.read32(STATUS);
        s != u32::MAX && s & STATUS_LU != 0
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes up to `budget` received frames (the CRC already stripped), oldest
    /// first, handing each to `sink`, and gives their descriptors back to the
    /// device; returns how many were handed over. Descriptors with error bits, a
    /// bad length or without EOP are given back without a frame, and counted (they
    /// count toward the budget too, so a device writing garbage cannot keep the
    /// caller here).
    pub fn receive(&mut self, budget: usize, mut sink: impl FnMut(&[u8])) -> usize {
        let Some(m) = &self.memory else { return 0 };
        let (rings, buffers) = (m.rings + RX_RING_OFFSET, m.rx_buffers);
        let mut frames = 0;
        let mut last = None;
        let mut buf = [0u8; BUFFER_BYTES];
        for _ in 0..budget.min(RX_ENTRIES) {
            let i = self.rx_next;
            let d = rings + (i * desc::SIZE) as u64;
            let status_dword = self.dma.read_u32(d + desc::RX_STATUS_DWORD);
            let (status, errors) = (status_dword as u8, (status_dword >> 8) as u8);
            if status & desc::RX_DD == 0 {
                break;
            }
            // Read the length only once DD is seen: the device writes the whole
            // descriptor back before it sets DD (§3.2.3.1).
            let len = (self.dma.read_u32(d + desc::RX_LENGTH) & 0xFFFF) as usize;
            let eop = status & desc::RX_EOP != 0;
            let buffer = buffers + (i * BUFFER_BYTES) as u64;
            if self.rx_discarding || !eop {
                if !self.rx_discarding {
                    self.stats.rx_fragmented += 1;
                }
                self.rx_discarding = !eop;
            } else if errors != 0 {
                self.stats.rx_errors += 1;
            } else if len == 0 || len > BUFFER_BYTES || len > MAX_FRAME {
                self.stats.rx_bad_length += 1;
            } else {
                self.dma.read(buffer, &mut buf[..len]);
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += len as u64;
                frames += 1;
                sink(&buf[..len]);
            }
            // Back to the device with DD clear.
            self.dma.write(d, &desc::rx(buffer));
            last = Some(i);
            self.rx_next = (i + 1) % RX_ENTRIES;
        }
        if let Some(i) = last {
            // The tail is one past the last descriptor the device may fill: the one
            // just given back (§3.2.6).
            self.regs.write32(RDT, i as u32);
        }
        frames
    }

    /// Walks the transmit descriptors the device has completed (DD) and makes them
    /// free again; returns how many are still in flight.
    fn reclaim(&mut self) -> usize {
        let Some(m) = &self.memory else { return 0 };
        let rings = m.rings + TX_RING_OFFSET;
        while self.tx_clean != self.tx_tail {
            let d = rings + (self.tx_clean * desc::SIZE) as u64;
            if (self.dma.read_u32(d + desc::TX_STATUS_DWORD) as u8) & desc::TX_DD == 0 {
                break;
            }
            self.tx_clean = (self.tx_clean + 1) % TX_ENTRIES;
        }
        (self.tx_tail + TX_ENTRIES - self.tx_clean) % TX_ENTRIES
    }

    /// Frames given to the device and not yet seen sent.
    pub fn tx_in_flight(&mut self) -> usize {
        self.reclaim()
    }

    /// Copies `frame` (an Ethernet frame without CRC: the device appends it) into
    /// the next free transmit buffer and hands it to the device.
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), TxError> {
        if frame.len() > MAX_FRAME {
            self.stats.tx_bad_size += 1;
            return Err(TxError::TooLarge);
        }
        if frame.len() < MIN_FRAME {
            self.stats.tx_bad_size += 1;
            return Err(TxError::TooShort);
        }
        // One descriptor stays unused so that a full ring (tail one behind the
        // head) differs from an empty one (tail == head, §3.4).
        if self.reclaim() >= TX_ENTRIES - 1 {
            self.stats.tx_ring_full += 1;
            return Err(TxError::RingFull);
        }
        let Some(m) = &self.memory else {
            return Err(TxError::RingFull);
        };
        let i = self.tx_tail;
        let buffer = m.tx_buffers + (i * BUFFER_BYTES) as u64;
        let d = m.rings + TX_RING_OFFSET + (i * desc::SIZE) as u64;
        self.dma.write(buffer, frame);
        self.dma.write(d, &desc::tx(buffer, frame.len() as u16));
        self.tx_tail = (i + 1) % TX_ENTRIES;
        self.regs.write32(TDT, self.tx_tail as u32);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    /// Stops the controller: receive and transmit off, a device reset (it no longer
    /// touches the rings), and the DMA memory given back. Later calls of
    /// [`Nic::receive`] and [`Nic::transmit`] do nothing.
    pub fn shutdown(&mut self, clock: &mut impl Clock) {
        self.regs.write32(RCTL, 0);
        self.regs.write32(TCTL, 0);
        // A device that does not finish its reset may still write: keep the memory
        // in that case rather than hand it to someone else.
        if self.reset(clock).is_err() {
            return;
        }
        if let Some(m) = self.memory.take() {
            self.dma.free(m.tx_buffers, BUFFER_PAGES_TX);
            self.dma.free(m.rx_buffers, BUFFER_PAGES_RX);
            self.dma.free(m.rings, 1);
        }
    }
}

fn valid_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != &[0; 6]
}
