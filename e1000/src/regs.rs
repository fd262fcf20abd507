//! Register offsets and bits of the 8254x family (Intel "PCI/PCI-X Family of Gigabit
//! Ethernet Controllers Software Developer's Manual", 317453, cited as "8254x SDM
//! §x"), as far as this driver uses them. The 82574 (QEMU `e1000e`) keeps the same
//! offsets and legacy descriptors for everything here; where it differs (the EERD
//! layout) both forms are listed.

/// Device Control (8254x SDM §13.4.1).
pub const CTRL: usize = 0x0000;
/// Device Status (§13.4.2).
pub const STATUS: usize = 0x0008;
/// EEPROM Read (§13.4.4).
pub const EERD: usize = 0x0014;
/// Interrupt Cause Read (§13.4.17): read to clear.
pub const ICR: usize = 0x00C0;
/// Interrupt Mask Clear (§13.4.21).
pub const IMC: usize = 0x00D8;
/// Receive Control (§13.4.22).
pub const RCTL: usize = 0x0100;
/// Transmit Control (§13.4.33).
pub const TCTL: usize = 0x0400;
/// Transmit Inter Packet Gap (§13.4.34).
pub const TIPG: usize = 0x0410;
/// Receive descriptor ring: base low/high, length in bytes, head, tail (§13.4.25-29).
pub const RDBAL: usize = 0x2800;
pub const RDBAH: usize = 0x2804;
pub const RDLEN: usize = 0x2808;
pub const RDH: usize = 0x2810;
pub const RDT: usize = 0x2818;
/// Transmit descriptor ring, the same five registers (§13.4.36-40).
pub const TDBAL: usize = 0x3800;
pub const TDBAH: usize = 0x3804;
pub const TDLEN: usize = 0x3808;
pub const TDH: usize = 0x3810;
pub const TDT: usize = 0x3818;
/// Multicast Table Array, 128 dwords (§13.5.1).
pub const MTA: usize = 0x5200;
pub const MTA_ENTRIES: usize = 128;
/// Receive Address 0, low and high (§13.5.2, §13.5.3).
pub const RAL0: usize = 0x5400;
pub const RAH0: usize = 0x5404;

// CTRL bits (§13.4.1).
/// Set Link Up: with auto-speed detection the MAC follows the PHY's link.
pub const CTRL_SLU: u32 = 1 << 6;
/// Auto-Speed Detection Enable.
pub const CTRL_ASDE: u32 = 1 << 5;
/// Link Reset (must be clear for the link to come up).
pub const CTRL_LRST: u32 = 1 << 3;
/// Invert Loss-of-Signal (must be clear on copper parts).
pub const CTRL_ILOS: u32 = 1 << 7;
/// Device Reset: self-clearing.
pub const CTRL_RST: u32 = 1 << 26;
/// VLAN Mode Enable (off: tags stay in the frames).
pub const CTRL_VME: u32 = 1 << 30;
/// PHY Reset.
pub const CTRL_PHY_RST: u32 = 1 << 31;

/// STATUS: Link Up (§13.4.2).
pub const STATUS_LU: u32 = 1 << 1;

// EERD (§13.4.4): the 8254x (82540EM...) has START at bit 0, DONE at bit 4 and the
// word address in bits 15:8; the 82541/82547 and the 82571 and later parts
// (82574: its datasheet §10.2.2.4) have DONE at bit 1 and the address in bits 15:2.
// The data is in bits 31:16 in both.
pub const EERD_START: u32 = 1 << 0;
pub const EERD_DONE_8254X: u32 = 1 << 4;
pub const EERD_ADDR_SHIFT_8254X: u32 = 8;
pub const EERD_DONE_82574: u32 = 1 << 1;
pub const EERD_ADDR_SHIFT_82574: u32 = 2;

/// RAH: Address Valid (§13.5.3).
pub const RAH_AV: u32 = 1 << 31;

// RCTL bits (§13.4.22).
pub const RCTL_EN: u32 = 1 << 1;
/// Unicast and Multicast Promiscuous: every frame, whatever its destination.
pub const RCTL_UPE: u32 = 1 << 3;
pub const RCTL_MPE: u32 = 1 << 4;
/// Broadcast Accept Mode.
pub const RCTL_BAM: u32 = 1 << 15;
/// Strip the Ethernet CRC from received frames.
pub const RCTL_SECRC: u32 = 1 << 26;
// BSIZE = 00 with BSEX = 0: 2048-byte receive buffers; LPE = 0: frames over 1522
// bytes are not received at all.

// TCTL bits (§13.4.33).
pub const TCTL_EN: u32 = 1 << 1;
/// Pad Short Packets to 64 bytes.
pub const TCTL_PSP: u32 = 1 << 3;
/// Collision Threshold: 0x0F, the manual's recommended value (§14.5).
pub const TCTL_CT: u32 = 0x0F << 4;
/// Collision Distance: 0x40 for full duplex (§14.5).
pub const TCTL_COLD: u32 = 0x40 << 12;

/// TIPG for copper (IEEE 802.3) media: IPGT 10, IPGR1 8, IPGR2 6 (§13.4.34).
pub const TIPG_COPPER: u32 = 10 | (8 << 10) | (6 << 20);
