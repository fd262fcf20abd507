//! `udpecho64`: an Echo Protocol server (RFC 862) on UDP port 7 at
//! [`udpecho::GUEST_ADDRESS`] (10.0.2.16), over the VM's virtio-net NIC driven by
//! the `virtio-drivers` crate's `VirtIONetRaw` in polling mode, as `net64` drives
//! it. The frames are answered by the host-tested `udpecho` crate: ARP requests
//! for its address, and datagrams to its port echoed to their source. It is what
//! a UDP forward from the host reaches in the uplink test (`--forward
//! udp:HOSTPORT=udpecho64:7`): the Linux guest's busybox has no UDP listener.
//!
//! A tiny guest takes no command line, so the address is fixed: the VM's NIC
//! must have `ip = "10.0.2.16/24"` on the uplink's network for a forward to
//! reach it. It serves until 3 s after the last datagram it echoed, or 120 s
//! when none comes (the machine stops only once every VM has), then reports.
//!
//! Prints:
//! ```text
//! udpecho64: virtio-net at 00:04.0, mac 62:.., echo on 10.0.2.16 UDP port 7
//! udpecho64: ARP reply to 10.0.2.2 at 881 ms
//! udpecho64: echoed 28 bytes to 10.0.2.2:40000 at 914 ms: hv-udp-probe ...
//! udpecho64: done: 1 datagram(s) echoed, 1 ARP request(s) answered, 0 frame(s) ignored
//! ```
//! (the times since it began to listen, by its PIT-calibrated TSC, say when
//! each frame came). Any failure is one `udpecho64: FAIL <reason>` line.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::fmt;

    use guests::println;
    use guests::tsc;
    use guests::virtio_hal::{self, BumpHal};
    use udpecho::{Reply, Responder, ECHO_PORT, GUEST_ADDRESS, MAX_FRAME};
    use virtio_drivers::device::net::VirtIONetRaw;
    use virtio_drivers::transport::DeviceType;

    guests::entry_point!(main);

    /// Descriptors per virtqueue.
    const QUEUE_SIZE: usize = 16;
    /// Receive buffers kept posted: an ARP request and the datagram behind it
    /// may arrive back to back while the guest is sending its ARP reply.
    const RX_BUFFERS: usize = 4;
    /// One receive buffer: the virtio-net header and a 1514-byte frame fit.
    const RX_BUFFER: usize = 2048;
    /// How long it waits for the first datagram ...
    const FIRST_WAIT_MS: u64 = 120_000;
    /// ... and for another after one it echoed.
    const QUIET_MS: u64 = 3_000;
    /// How much of an echoed datagram's data the console line shows.
    const SHOWN: usize = 64;

    /// Data as console text: printable ASCII as it is, other bytes as `.`, at
    /// most [`SHOWN`] bytes.
    struct Shown<'a>(&'a [u8]);

    impl fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for &b in self.0.iter().take(SHOWN) {
                let c = if (0x20..0x7F).contains(&b) {
                    b as char
                } else {
                    '.'
                };
                write!(f, "{c}")?;
            }
            if self.0.len() > SHOWN {
                write!(f, "...")?;
            }
            Ok(())
        }
    }

    struct Ip([u8; 4]);

    impl fmt::Display for Ip {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let [a, b, c, d] = self.0;
            write!(f, "{a}.{b}.{c}.{d}")
        }
    }

    fn main() {
        // An unexpected exception is reported (vector, RIP) instead of a triple fault.
        guests::idt::install();
        if let Err(why) = run() {
            println!("udpecho64: FAIL {why}");
        }
    }

    fn run() -> Result<(), &'static str> {
        let rate = tsc::calibrate()?;
        let (df, transport) =
            virtio_hal::open(DeviceType::Network, "no virtio-net function on bus 0")?;
        let mut net = VirtIONetRaw::<BumpHal, _, QUEUE_SIZE>::new(transport)
            .map_err(|_| "the virtio-net driver did not initialise")?;
        let mac: [u8; 6] = net.mac_address();
        println!(
            "udpecho64: virtio-net at {:02x}:{:02x}.{}, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, echo on {} UDP port {ECHO_PORT}",
            df.bus, df.device, df.function, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
            Ip(GUEST_ADDRESS)
        );
        let responder = Responder::new(mac, GUEST_ADDRESS, ECHO_PORT);
        let mut rx = [[0u8; RX_BUFFER]; RX_BUFFERS];
        let mut tokens = [0u16; RX_BUFFERS];
        for (buffer, token) in rx.iter_mut().zip(&mut tokens) {
            // SAFETY: `buffer` lives in this frame until the function returns,
            // after `net` (declared before it) is no longer polled, and is touched
            // again only after the device handed it back (receive_complete below).
            *token = unsafe { net.receive_begin(buffer) }
                .map_err(|_| "posting a receive buffer failed")?;
        }
        let mut out = [0u8; MAX_FRAME];
        let (mut echoed, mut arp, mut ignored) = (0u32, 0u32, 0u32);
        let start = tsc::rdtsc();
        let ms = || tsc::rdtsc().wrapping_sub(start) / rate.per_ms;
        let mut deadline = rate.deadline_ms(FIRST_WAIT_MS);
        while tsc::rdtsc() < deadline {
            let Some(token) = net.poll_receive() else {
                core::hint::spin_loop();
                continue;
            };
            let i = tokens
                .iter()
                .position(|&t| t == token)
                .ok_or("the device returned a receive buffer it was not given")?;
            // SAFETY: rx[i] is the buffer posted with `token`.
            let (header, len) = unsafe { net.receive_complete(token, &mut rx[i]) }
                .map_err(|_| "completing a receive failed")?;
            let frame = header
                .checked_add(len)
                .and_then(|end| rx[i].get(header..end))
                .ok_or("the device reported a frame longer than its buffer")?;
            match responder.answer(frame, &mut out) {
                Ok(Reply::Arp { len, asker }) => {
                    net.send(&out[..len])
                        .map_err(|_| "sending an ARP reply failed")?;
                    arp += 1;
                    println!("udpecho64: ARP reply to {} at {} ms", Ip(asker), ms());
                }
                Ok(Reply::Echo { len, to, data }) => {
                    net.send(&out[..len])
                        .map_err(|_| "sending an echo failed")?;
                    echoed += 1;
                    println!(
                        "udpecho64: echoed {} bytes to {}:{} at {} ms: {}",
                        data.len(),
                        Ip(to.0),
                        to.1,
                        ms(),
                        Shown(&out[data])
                    );
                    deadline = rate.deadline_ms(QUIET_MS);
                }
                Err(_) => ignored += 1,
            }
            // SAFETY: as for the first posting of rx[i]; the frame borrowed from
            // it is no longer used.
            tokens[i] = unsafe { net.receive_begin(&mut rx[i]) }
                .map_err(|_| "posting a receive buffer failed")?;
        }
        println!(
            "udpecho64: done: {echoed} datagram(s) echoed, {arp} ARP request(s) answered, {ignored} frame(s) ignored"
        );
        Ok(())
    }
}
