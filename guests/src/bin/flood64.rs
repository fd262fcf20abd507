//! `flood64`: a VM that floods its network. Its virtio-net NIC (driven as `net64`
//! drives its own) sends full-size broadcast frames from its own MAC as fast as the
//! device takes them, forever: the switch must flood each to every other port of
//! the network, so without a limit it would fill their receive queues. The network
//! test runs it in the background beside two Linux VMs that ping and move data
//! over the same network: their transfer must complete regardless, and the switch's
//! counters must show `flood64`'s frames dropped at its own port for its rate limit.
//!
//! Prints:
//! ```text
//! flood64: virtio-net at 00:04.0, mac 62:b6:99:fc:e7:02
//! flood64: flooding
//! flood64: 1000 frames sent
//! flood64: 10000 frames sent
//! ...
//! ```
//! (a line at each power of ten). Any failure is one `flood64: FAIL <reason>` line.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {

    use guests::println;
    use guests::virtio_hal::{self, BumpHal};
    use virtio_drivers::device::net::VirtIONetRaw;
    use virtio_drivers::transport::DeviceType;

    guests::entry_point!(main);

    /// The largest untagged Ethernet frame without its FCS.
    const FRAME: usize = 1514;

    /// A broadcast frame from `source` of EtherType 0x88B5 (IEEE 802 local
    /// experimental), its payload marked `hv-flood64`: Linux drops it unread.
    fn frame(source: [u8; 6]) -> [u8; FRAME] {
        let mut f = [0u8; FRAME];
        f[..6].copy_from_slice(&[0xFF; 6]);
        f[6..12].copy_from_slice(&source);
        f[12..14].copy_from_slice(&[0x88, 0xB5]);
        f[14..24].copy_from_slice(b"hv-flood64");
        f
    }

    fn main() {
        // An unexpected exception is reported (vector, RIP) instead of a triple fault.
        guests::idt::install();
        if let Err(why) = run() {
            println!("flood64: FAIL {why}");
        }
    }

    fn run() -> Result<(), &'static str> {
        let (df, transport) =
            virtio_hal::open(DeviceType::Network, "no virtio-net function on bus 0")?;
        let mut net = VirtIONetRaw::<BumpHal, _, 16>::new(transport)
            .map_err(|_| "the virtio-net driver did not initialise")?;
        let mac: [u8; 6] = net.mac_address();
        println!(
            "flood64: virtio-net at {:02x}:{:02x}.{}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            df.bus, df.device, df.function, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        );
        let f = frame(mac);
        println!("flood64: flooding");
        let mut sent: u64 = 0;
        let mut next_report: u64 = 1000;
        loop {
            net.send(&f).map_err(|_| "sending a frame failed")?;
            sent += 1;
            if sent == next_report {
                println!("flood64: {sent} frames sent");
                next_report = next_report.saturating_mul(10);
            }
        }
    }
}
