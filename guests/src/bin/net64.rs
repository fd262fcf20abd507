//! `net64`: the VM's virtio-net NIC, driven by the `virtio-drivers` crate's
//! `VirtIONetRaw` in polling mode, as `blk64` drives its disk (PCI bus 0 through
//! ports 0xCF8/0xCFC, the BAR where the hypervisor placed it, DMA from a static
//! buffer; the guest is identity-mapped).
//!
//! It sends two frames and checks nothing comes back: a broadcast from its own MAC
//! (the switch floods it to the other ports of its network, none of which may be
//! on another network), then one with a forged source MAC (the switch must drop
//! it: its port's counters in the stop report show it). The test reads the
//! counters of every port to see that neither reached a VM on another network.
//!
//! Prints:
//! ```text
//! net64: virtio-net at 00:04.0, mac 62:b6:99:fc:e7:02
//! net64: sent a broadcast
//! net64: sent a frame with a forged source
//! net64: done
//! ```
//! Any failure is one `net64: FAIL <reason>` line.

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

    /// A minimum-size Ethernet frame from `source` to broadcast, of EtherType
    /// 0x88B5 (IEEE 802 local experimental), its payload marked `hv-net64`.
    fn frame(source: [u8; 6]) -> [u8; 60] {
        let mut f = [0u8; 60];
        f[..6].copy_from_slice(&[0xFF; 6]);
        f[6..12].copy_from_slice(&source);
        f[12..14].copy_from_slice(&[0x88, 0xB5]);
        f[14..22].copy_from_slice(b"hv-net64");
        f
    }

    fn main() {
        // An unexpected exception is reported (vector, RIP) instead of a triple fault.
        guests::idt::install();
        if let Err(why) = run() {
            println!("net64: FAIL {why}");
        }
    }

    fn run() -> Result<(), &'static str> {
        let (df, transport) =
            virtio_hal::open(DeviceType::Network, "no virtio-net function on bus 0")?;
        let mut net = VirtIONetRaw::<BumpHal, _, 16>::new(transport)
            .map_err(|_| "the virtio-net driver did not initialise")?;
        let mac: [u8; 6] = net.mac_address();
        println!(
            "net64: virtio-net at {:02x}:{:02x}.{}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            df.bus, df.device, df.function, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        );
        net.send(&frame(mac))
            .map_err(|_| "sending the broadcast failed")?;
        println!("net64: sent a broadcast");
        // Someone else's address (locally administered, unicast).
        let forged = [0x02, 0x66, 0x6F, 0x72, 0x67, 0x65];
        net.send(&frame(forged))
            .map_err(|_| "sending the forged frame failed")?;
        println!("net64: sent a frame with a forged source");
        println!("net64: done");
        Ok(())
    }
}
