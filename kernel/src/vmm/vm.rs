//! One virtual machine: its vCPU, the PC platform devices it sees, its MSR state,
//! and the vendor-neutral handling of every exit, including interrupt delivery from
//! the devices through the 8259A pair. Generic over `vcpu::Vcpu`, with no hardware
//! access of its own, so the dispatch is host-tested with a scripted vCPU.

use alloc::format;
use alloc::string::String;
use devices::{
    all_ones, Cmos, DebugExit, FwCfg, LineBuffer, PciConfig, Pic8259, Pit8254, PortDevice, PortMap,
    SerialSink, SystemControlA, Uart16550, AUX_IRQ, CMOS_BASE, CMOS_PORT_COUNT, COM1_BASE,
    COM1_IRQ, DEBUG_EXIT_BASE, DEBUG_EXIT_PORT_COUNT, FW_CFG_BASE, FW_CFG_PORT_COUNT, I8042,
    KBD_IRQ, PCI_CONFIG_BASE, PCI_CONFIG_PORT_COUNT, PIT_BASE, PIT_IRQ, PIT_PORT_COUNT, PORT_61,
    PORT_COUNT, SYSTEM_CONTROL_A_PORT,
};
use devices::{
    isa_irq_pin, IoApic, LapicConfig, LocalApic, IOAPIC_BASE, IOAPIC_MMIO_SIZE, LAPIC_BASE,
    LAPIC_MMIO_SIZE,
};
use vcpu::{Exception, Exit, Vcpu};

use super::guest_walk::GuestMemory;
use super::mmio;

use super::policy::{self, CpuidResult, MsrAccess, MsrState};
use super::stats::ExitStats;

const RFLAGS_IF: u64 = 1 << 9;

/// Where finished console lines of a VM go: `(vm name, line)`.
pub type ConsoleOut = fn(&str, &str);

/// The guest's COM1 output, assembled into lines and relayed as `name | text`.
pub struct Relay {
    name: String,
    line: LineBuffer,
    out: ConsoleOut,
}

impl SerialSink for Relay {
    fn write_byte(&mut self, byte: u8) {
        if let Some(line) = self.line.push(byte) {
            (self.out)(&self.name, line.text);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Com1,
    Pic,
    Pit,
    Cmos,
    PciConfig,
    Kbc,
    SystemControlA,
    FwCfg,
    DebugExit,
}

/// The port ranges of the PC platform every VM gets.
const PORT_RANGES: [(u16, u16, Device); 13] = [
    (COM1_BASE, PORT_COUNT, Device::Com1),
    (0x20, 2, Device::Pic),
    (0xA0, 2, Device::Pic),
    (0x4D0, 2, Device::Pic),
    (PIT_BASE, PIT_PORT_COUNT, Device::Pit),
    (PORT_61, 1, Device::Pit),
    (CMOS_BASE, CMOS_PORT_COUNT, Device::Cmos),
    (PCI_CONFIG_BASE, PCI_CONFIG_PORT_COUNT, Device::PciConfig),
    (0x60, 1, Device::Kbc),
    (0x64, 1, Device::Kbc),
    (SYSTEM_CONTROL_A_PORT, 1, Device::SystemControlA),
    (FW_CFG_BASE, FW_CFG_PORT_COUNT, Device::FwCfg),
    (DEBUG_EXIT_BASE, DEBUG_EXIT_PORT_COUNT, Device::DebugExit),
];

/// The VM's RAM as the hypervisor reaches it, for reading guest instructions during
/// MMIO emulation.
#[derive(Clone, Copy, Debug)]
pub struct GuestRam {
    base: *const u8,
    len: u64,
}

impl GuestRam {
    /// # Safety
    /// `base..base + len` must stay readable for as long as the VM exists (the kernel
    /// passes the VM's own RAM through the physical-memory mapping).
    pub unsafe fn new(base: *const u8, len: u64) -> Self {
        Self { base, len }
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        match gpa.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {
                // SAFETY: in bounds of the RAM `new` was given.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        self.base.add(gpa as usize),
                        buf.as_mut_ptr(),
                        buf.len(),
                    )
                };
                Ok(())
            }
            _ => Err(()),
        }
    }
}

/// What a VM is told about the machine it runs on.
#[derive(Clone, Copy, Debug)]
pub struct MachineInfo {
    pub ram: GuestRam,
    /// Unix time (ns) at the moment `now_ns` was 0, for the RTC.
    pub epoch_unix_ns: u64,
    /// The TSC rate the guest sees (the host's), for the TSC-deadline timer.
    pub tsc_hz: u64,
}

fn in_page(gpa: u64, base: u64, size: u64) -> bool {
    (base..base + size).contains(&gpa)
}

/// What the run loop should do after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep running this VM.
    Continue,
    /// The time slice is over: run the next VM.
    Yield,
    /// The VM is finished; the text says why.
    Stop(String),
    /// The guest asked for the benchmark's bare CPUID loop (the run loop carries it
    /// out: it needs nothing but the vCPU).
    BareCpuidLoop,
}

pub struct Vm<V: Vcpu> {
    pub name: String,
    pub vcpu: V,
    com1: Uart16550<Relay>,
    pic: Pic8259,
    pit: Pit8254,
    cmos: Cmos,
    pci: PciConfig,
    kbc: I8042,
    sysa: SystemControlA,
    fw_cfg: FwCfg<'static, 1>,
    debug_exit: DebugExit,
    lapic: LocalApic,
    ioapic: IoApic,
    ram: GuestRam,
    ports: PortMap<Device, 16>,
    msrs: MsrState,
    epoch_unix_ns: u64,
    pub stats: ExitStats,
    pub unknown_port_accesses: u64,
    /// Waiting in HLT with interrupts enabled for the next interrupt.
    pub halted: bool,
    host_cpuid: fn(u32, u32) -> CpuidResult,
}

fn set_low32(reg: &mut u64, value: u32) {
    // 32-bit results zero-extend into the 64-bit register, as hardware does.
    *reg = value as u64;
}

impl<V: Vcpu> Vm<V> {
    pub fn new(
        name: &str,
        vcpu: V,
        machine: MachineInfo,
        out: ConsoleOut,
        host_cpuid: fn(u32, u32) -> CpuidResult,
    ) -> Self {
        let mut ports = PortMap::new();
        for (base, len, device) in PORT_RANGES {
            ports
                .register(base, len, device)
                .expect("the platform's port ranges are disjoint and fit the map");
        }
        Self {
            name: name.into(),
            vcpu,
            com1: Uart16550::new(Relay {
                name: name.into(),
                line: LineBuffer::new(),
                out,
            }),
            pic: Pic8259::new(),
            pit: Pit8254::new(),
            // The VM's RAM is one range from 0: all of it counts as below 4 GiB.
            cmos: Cmos::new(machine.ram.len, 0),
            pci: PciConfig::new(),
            kbc: I8042::new(),
            sysa: SystemControlA::new(),
            fw_cfg: FwCfg::new(machine.ram.len, 1),
            debug_exit: DebugExit::new(),
            lapic: {
                // Firmware leaves the BSP's APIC in virtual-wire mode (LINT0 = ExtINT),
                // so the PIC reaches the CPU until the guest reprograms the APIC.
                let mut lapic = LocalApic::new(LapicConfig::new(machine.tsc_hz));
                lapic.setup_virtual_wire();
                lapic
            },
            ioapic: IoApic::new(0),
            ram: machine.ram,
            ports,
            msrs: MsrState::default(),
            epoch_unix_ns: machine.epoch_unix_ns,
            stats: ExitStats::default(),
            unknown_port_accesses: 0,
            halted: false,
            host_cpuid,
        }
    }

    /// Whether the guest's UART can take another byte typed on the host console.
    pub fn console_ready(&self) -> bool {
        self.com1.rx_space() > 0
    }

    /// A byte typed on the host console for this VM. Returns false when the guest's
    /// receive FIFO is full.
    pub fn console_input(&mut self, byte: u8) -> bool {
        self.console_ready() && self.com1.enqueue_input(byte)
    }

    /// The earliest time at which a device of this VM wants to interrupt (the PIT).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.pit.next_irq0_deadline_ns()
    }

    /// Brings the interrupt lines up to date at `now_ns` and, before the next entry,
    /// delivers the highest-priority pending interrupt if the guest can take it, or
    /// asks for an interrupt-window exit if it cannot yet. Wakes a halted vCPU when
    /// an interrupt is pending.
    pub fn prepare_entry(&mut self, now_ns: u64) {
        if self.pit.irq0_pending(now_ns) > 0 {
            // The PIC latches one edge: several elapsed periods are one interrupt, as
            // when a real PC misses ticks. ISA IRQ 0 is IOAPIC pin 2 on PCs.
            self.pic.pulse_irq(PIT_IRQ);
            let d = self.ioapic.pulse_irq(isa_irq_pin(PIT_IRQ));
            self.route(d);
        }
        for (irq, level) in [
            (COM1_IRQ, self.com1.interrupt_pending()),
            (KBD_IRQ, self.kbc.kbd_irq_level()),
            (AUX_IRQ, self.kbc.aux_irq_level()),
        ] {
            self.pic.set_irq(irq, level);
            let d = self.ioapic.set_irq(isa_irq_pin(irq), level);
            self.route(d);
        }
        self.lapic.poll_timer(now_ns);
        // The PIC's INTR reaches the CPU through LINT0 (ExtINT), which bypasses the
        // APIC's priority logic (SDM Vol. 3A 11.5.1), so it goes first.
        let from_pic = self.lapic.accepts_pic_interrupts() && self.pic.pending_vector().is_some();
        if !from_pic && self.lapic.pending_vector().is_none() {
            self.vcpu.request_interrupt_window(false);
            return;
        }
        if self.vcpu.rflags() & RFLAGS_IF != 0 {
            self.halted = false;
        }
        if self.vcpu.interrupt_ready() {
            let vector = if from_pic {
                self.pic.acknowledge()
            } else {
                self.lapic.acknowledge()
            };
            if let Some(vector) = vector {
                self.vcpu.inject_interrupt(vector);
            }
            self.vcpu.request_interrupt_window(false);
        } else {
            self.vcpu.request_interrupt_window(true);
        }
    }

    /// An IOAPIC message to the (only) local APIC: fixed and lowest-priority
    /// deliveries that address it.
    fn route(&mut self, delivery: Option<devices::ioapic::Delivery>) {
        if let Some(d) = delivery {
            let fixed = matches!(
                d.mode,
                devices::DeliveryMode::Fixed | devices::DeliveryMode::LowestPriority
            );
            if fixed && self.lapic.matches_ioapic_destination(d.dest, d.logical) {
                self.lapic.deliver(d.vector, d.level_triggered);
            }
        }
    }

    /// A level-triggered interrupt's EOI at the local APIC reaches the IOAPIC, which
    /// delivers again if the line is still asserted (SDM Vol. 3A 11.8.5).
    fn route_eoi(&mut self, eoi_vector: Option<u8>) {
        if let Some(v) = eoi_vector {
            for d in self.ioapic.eoi(v) {
                self.route(Some(d));
            }
        }
    }

    /// Emulates the instruction that touched the local APIC or IOAPIC page.
    fn emulate_mmio(&mut self, gpa: u64, write: bool, now_ns: u64) -> Next {
        let (lapic, ioapic) = (&mut self.lapic, &mut self.ioapic);
        let mut eoi = None;
        let mut delivery = None;
        let mut device = |addr: u64, size: u8, value: Option<u64>| -> u64 {
            if in_page(addr, LAPIC_BASE, LAPIC_MMIO_SIZE) {
                let offset = addr - LAPIC_BASE;
                match value {
                    Some(v) => {
                        eoi = lapic.mmio_write(offset, size, v as u32, now_ns);
                        0
                    }
                    None => lapic.mmio_read(offset, size, now_ns) as u64,
                }
            } else {
                let offset = addr - IOAPIC_BASE;
                match value {
                    Some(v) => {
                        delivery = ioapic.mmio_write(offset, size, v as u32);
                        0
                    }
                    None => ioapic.mmio_read(offset, size) as u64,
                }
            }
        };
        match mmio::emulate(&mut self.vcpu, &self.ram, gpa, write, &mut device) {
            Ok(()) => {
                self.route_eoi(eoi);
                self.route(delivery);
                Next::Continue
            }
            Err(e) => Next::Stop(format!(
                "MMIO access to guest-physical {gpa:#x} at RIP {:#x} cannot be emulated: {e}",
                self.vcpu.rip()
            )),
        }
    }

    fn port_access(
        &mut self,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
        now_ns: u64,
    ) -> Result<u32, String> {
        let result = match self.ports.lookup(port) {
            Some((Device::Com1, offset)) => self.com1.access(offset, size, write, value),
            Some((Device::Pic, _)) => self.pic.port_io(port, size, write, value),
            Some((Device::Pit, _)) => self.pit.port_io(port, size, write, value, now_ns),
            Some((Device::Cmos, _)) => {
                let unix_ns = self.epoch_unix_ns + now_ns;
                self.cmos.port_io(port, size, write, value, unix_ns)
            }
            Some((Device::PciConfig, offset)) => self.pci.access(offset, size, write, value),
            Some((Device::Kbc, _)) => self.kbc.port_io(port, size, write, value),
            Some((Device::SystemControlA, offset)) => self.sysa.access(offset, size, write, value),
            Some((Device::FwCfg, offset)) => self.fw_cfg.access(offset, size, write, value),
            Some((Device::DebugExit, offset)) => self.debug_exit.access(offset, size, write, value),
            None => {
                // Nothing there: reads float high, writes vanish, as on a PC bus.
                self.unknown_port_accesses += 1;
                all_ones(size)
            }
        };
        if let Some(code) = self.debug_exit.take_exit() {
            return Err(format!(
                "guest wrote to the debug-exit port: exit code {code}"
            ));
        }
        if self.kbc.take_reset_request()
            || self.sysa.take_reset_request()
            || self.pci.take_reset_request()
        {
            return Err(String::from("guest requested a reset"));
        }
        Ok(result)
    }

    /// Relays what the guest printed without a final newline.
    pub fn flush_console(&mut self) {
        let relay = self.com1.sink_mut();
        if let Some(line) = relay.line.flush_partial() {
            (relay.out)(&relay.name, line.text);
        }
    }

    /// Handles one exit at time `now_ns`; the vCPU is left ready for the next entry.
    pub fn handle(&mut self, exit: Exit, now_ns: u64) -> Next {
        self.stats.record(exit.kind());
        match exit {
            Exit::PortIo(io) => {
                if io.string {
                    return Next::Stop(format!(
                        "string port I/O (INS/OUTS) on port {:#x} at RIP {:#x} is not emulated",
                        io.port,
                        self.vcpu.rip()
                    ));
                }
                let mask = all_ones(io.size) as u64;
                let value = (self.vcpu.regs().rax & mask) as u32;
                let result = match self.port_access(io.port, io.size, io.write, value, now_ns) {
                    Ok(r) => r,
                    Err(why) => return Next::Stop(why),
                };
                if !io.write {
                    let rax = &mut self.vcpu.regs().rax;
                    // IN AL/AX keeps the upper bits of RAX; IN EAX zero-extends.
                    *rax = if io.size == 4 {
                        result as u64
                    } else {
                        (*rax & !mask) | (result as u64 & mask)
                    };
                }
                self.vcpu.skip_instruction();
                Next::Continue
            }
            Exit::Cpuid { leaf, subleaf } => {
                let r = policy::cpuid(leaf, subleaf, self.host_cpuid);
                let regs = self.vcpu.regs();
                set_low32(&mut regs.rax, r.eax);
                set_low32(&mut regs.rbx, r.ebx);
                set_low32(&mut regs.rcx, r.ecx);
                set_low32(&mut regs.rdx, r.edx);
                self.vcpu.skip_instruction();
                Next::Continue
            }
            Exit::Rdmsr { msr } => {
                // The local APIC's MSRs belong to its model; the rest to the policy.
                let value = if LocalApic::handles_msr(msr) {
                    self.lapic.read_msr(msr, now_ns).ok()
                } else {
                    match self.msrs.read(msr) {
                        MsrAccess::Value(v) => Some(v),
                        MsrAccess::Backend => self.vcpu.read_backend_msr(msr),
                        MsrAccess::Fault => None,
                    }
                };
                match value {
                    Some(v) => {
                        let regs = self.vcpu.regs();
                        set_low32(&mut regs.rax, v as u32);
                        set_low32(&mut regs.rdx, (v >> 32) as u32);
                        self.vcpu.skip_instruction();
                    }
                    None => self.vcpu.inject_exception(Exception::GP0),
                }
                Next::Continue
            }
            Exit::Wrmsr { msr, value } => {
                let ok = if LocalApic::handles_msr(msr) {
                    match self.lapic.write_msr(msr, value, now_ns) {
                        Ok(eoi) => {
                            self.route_eoi(eoi);
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    match self.msrs.write(msr, value) {
                        MsrAccess::Value(_) => true,
                        MsrAccess::Backend => self.vcpu.write_backend_msr(msr, value),
                        MsrAccess::Fault => false,
                    }
                };
                if ok {
                    self.vcpu.skip_instruction();
                } else {
                    self.vcpu.inject_exception(Exception::GP0);
                }
                Next::Continue
            }
            Exit::Hypercall if self.vcpu.regs().rax == policy::hypercall::BENCH_BARE_BEGIN => {
                self.vcpu.regs().rax = 0;
                self.vcpu.skip_instruction();
                Next::BareCpuidLoop
            }
            Exit::Hypercall => {
                let regs = self.vcpu.regs();
                regs.rax = policy::hypercall::dispatch(regs.rax);
                self.vcpu.skip_instruction();
                Next::Continue
            }
            // HLT with interrupts disabled can only be left by NMI or reset, which
            // nothing here sends: the guest has stopped itself.
            Exit::Halt if self.vcpu.rflags() & RFLAGS_IF == 0 => Next::Stop(format!(
                "halted with interrupts disabled at RIP {:#x}",
                self.vcpu.rip()
            )),
            Exit::Halt => {
                self.vcpu.skip_instruction();
                self.halted = true;
                Next::Yield
            }
            Exit::NestedPageFault {
                gpa,
                write,
                fetch: false,
            } if in_page(gpa, LAPIC_BASE, LAPIC_MMIO_SIZE)
                || in_page(gpa, IOAPIC_BASE, IOAPIC_MMIO_SIZE) =>
            {
                self.emulate_mmio(gpa, write, now_ns)
            }
            Exit::NestedPageFault { gpa, write, fetch } => Next::Stop(format!(
                "{} outside its memory: guest-physical {gpa:#x} at RIP {:#x}",
                if fetch {
                    "instruction fetch"
                } else if write {
                    "write"
                } else {
                    "read"
                },
                self.vcpu.rip()
            )),
            Exit::Mmio { gpa, write } => Next::Stop(format!(
                "{} of unassigned MMIO at guest-physical {gpa:#x}",
                if write { "write" } else { "read" }
            )),
            Exit::VirtInstruction => {
                self.vcpu.inject_exception(Exception::UD);
                Next::Continue
            }
            Exit::ExternalInterrupt | Exit::Preempted => Next::Yield,
            Exit::InterruptWindow => Next::Continue,
            Exit::Shutdown => Next::Stop(format!(
                "triple fault (shutdown) at RIP {:#x} in {:?} mode",
                self.vcpu.rip(),
                self.vcpu.mode()
            )),
            Exit::EntryFailure { code, reason } => {
                Next::Stop(format!("VM entry failed (code {code:#x}): {reason}"))
            }
            Exit::Unknown { code } => Next::Stop(format!(
                "unhandled exit (vendor code {code:#x}) at RIP {:#x}",
                self.vcpu.rip()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use vcpu::{CpuMode, GuestRegisters, PortIo};

    #[derive(Default)]
    struct FakeVcpu {
        regs: GuestRegisters,
        rip: u64,
        skipped: u32,
        injected: Vec<Exception>,
        efer: u64,
        rflags: u64,
        interrupts: Vec<u8>,
        window: bool,
        cr: vcpu::ControlRegs,
    }

    impl Vcpu for FakeVcpu {
        fn run(&mut self, _: u64) -> Exit {
            unreachable!()
        }
        fn regs(&mut self) -> &mut GuestRegisters {
            &mut self.regs
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, rip: u64) {
            self.rip = rip
        }
        fn skip_instruction(&mut self) {
            self.skipped += 1;
        }
        fn inject_exception(&mut self, e: Exception) {
            self.injected.push(e)
        }
        fn mode(&self) -> CpuMode {
            CpuMode::Long
        }
        fn read_backend_msr(&mut self, msr: u32) -> Option<u64> {
            (msr == policy::IA32_EFER).then_some(self.efer)
        }
        fn write_backend_msr(&mut self, msr: u32, value: u64) -> bool {
            if msr == policy::IA32_EFER {
                self.efer = value;
            }
            msr == policy::IA32_EFER
        }
        fn rflags(&self) -> u64 {
            self.rflags
        }
        fn interrupt_ready(&self) -> bool {
            self.rflags & RFLAGS_IF != 0
        }
        fn inject_interrupt(&mut self, vector: u8) {
            self.interrupts.push(vector)
        }
        fn request_interrupt_window(&mut self, on: bool) {
            self.window = on
        }
        fn rsp(&self) -> u64 {
            0
        }
        fn set_rsp(&mut self, _: u64) {}
        fn control_regs(&self) -> vcpu::ControlRegs {
            self.cr
        }
    }

    std::thread_local! {
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn capture(name: &str, text: &str) {
        LINES.with(|l| l.borrow_mut().push(format!("{name} | {text}")));
    }

    fn host(leaf: u32, _: u32) -> CpuidResult {
        CpuidResult {
            eax: leaf,
            ebx: 0,
            ecx: 0xffff_ffff,
            edx: 0,
        }
    }

    fn vm() -> Vm<FakeVcpu> {
        // The fake guest's RAM: leaked so it lives as long as the test's VM.
        let ram: &'static mut [u8] = alloc::vec![0u8; 4 << 20].leak();
        // SAFETY: the leaked buffer is never freed.
        let ram = unsafe { GuestRam::new(ram.as_ptr(), ram.len() as u64) };
        let machine = MachineInfo {
            ram,
            epoch_unix_ns: 0,
            tsc_hz: 1_000_000_000,
        };
        Vm::new("t", FakeVcpu::default(), machine, capture, host)
    }

    fn out(port: u16, size: u8) -> Exit {
        Exit::PortIo(PortIo {
            port,
            size,
            write: true,
            string: false,
            rep: false,
        })
    }
    fn inp(port: u16, size: u8) -> Exit {
        Exit::PortIo(PortIo {
            port,
            size,
            write: false,
            string: false,
            rep: false,
        })
    }

    #[test]
    fn console_output_is_relayed_by_line() {
        let mut vm = vm();
        for b in b"hi\nthere" {
            vm.vcpu.regs.rax = *b as u64;
            assert_eq!(vm.handle(out(0x3F8, 1), 0), Next::Continue);
        }
        vm.flush_console();
        let lines = LINES.with(|l| l.borrow().clone());
        assert_eq!(lines, ["t | hi", "t | there"]);
        assert_eq!(vm.vcpu.skipped, 8);
    }

    #[test]
    fn unknown_ports_read_all_ones_and_are_counted() {
        let mut vm = vm();
        vm.vcpu.regs.rax = 0x1122_3344_5566_7788;
        vm.handle(inp(0x1234, 1), 0);
        assert_eq!(vm.vcpu.regs.rax, 0x1122_3344_5566_77ff);
        vm.handle(inp(0x1234, 2), 0);
        assert_eq!(vm.vcpu.regs.rax, 0x1122_3344_5566_ffff);
        vm.handle(inp(0x1234, 4), 0);
        assert_eq!(vm.vcpu.regs.rax, 0xffff_ffff);
        vm.handle(out(0x1234, 4), 0);
        assert_eq!(vm.unknown_port_accesses, 4);
        assert_eq!(vm.stats.count(vcpu::ExitKind::PortIo), 4);
    }

    #[test]
    fn cpuid_goes_through_the_policy() {
        let mut vm = vm();
        vm.vcpu.regs.rbx = u64::MAX;
        vm.handle(
            Exit::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 0,
            },
            0,
        );
        assert_eq!(vm.vcpu.regs.rax, 0x4000_0001);
        assert_eq!(vm.vcpu.regs.rbx, u32::from_le_bytes(*b"hv-b") as u64);
        vm.handle(
            Exit::Cpuid {
                leaf: 1,
                subleaf: 0,
            },
            0,
        );
        assert_eq!(vm.vcpu.regs.rcx & (1 << 5), 0);
        assert_eq!(vm.vcpu.skipped, 2);
    }

    #[test]
    fn msrs_allowed_forbidden_and_backend() {
        let mut vm = vm();
        vm.handle(Exit::Rdmsr { msr: 0x1B }, 0);
        assert_eq!(vm.vcpu.regs.rax, 0xFEE0_0900);
        assert_eq!(vm.vcpu.regs.rdx, 0);
        vm.handle(Exit::Rdmsr { msr: 0xC001_0117 }, 0);
        vm.handle(
            Exit::Wrmsr {
                msr: 0xC001_0114,
                value: 0,
            },
            0,
        );
        assert_eq!(vm.vcpu.injected, [Exception::GP0, Exception::GP0]);
        vm.handle(
            Exit::Wrmsr {
                msr: policy::IA32_EFER,
                value: 0xD00,
            },
            0,
        );
        assert_eq!(vm.vcpu.efer, 0xD00);
        vm.handle(
            Exit::Wrmsr {
                msr: policy::IA32_EFER,
                value: 1 << 12,
            },
            0,
        );
        assert_eq!(vm.vcpu.efer, 0xD00, "SVME refused");
        assert_eq!(vm.vcpu.injected.len(), 3);
        assert_eq!(vm.vcpu.skipped, 2);
    }

    #[test]
    fn fatal_exits_stop_the_vm_with_a_reason() {
        let mut vm = vm();
        vm.vcpu.rip = 0x10_0040;
        let Next::Stop(why) = vm.handle(
            Exit::NestedPageFault {
                gpa: 0x3000_0000,
                write: true,
                fetch: false,
            },
            0,
        ) else {
            panic!("must stop")
        };
        assert_eq!(
            why,
            "write outside its memory: guest-physical 0x30000000 at RIP 0x100040"
        );
        assert!(
            matches!(vm.handle(Exit::Shutdown, 0), Next::Stop(w) if w.starts_with("triple fault"))
        );
        assert!(
            matches!(vm.handle(Exit::Halt, 0), Next::Stop(w) if w.contains("interrupts disabled"))
        );
        assert_eq!(vm.handle(Exit::ExternalInterrupt, 0), Next::Yield);
        assert_eq!(vm.handle(Exit::VirtInstruction, 0), Next::Continue);
        assert_eq!(vm.vcpu.injected, [Exception::UD]);
        vm.vcpu.regs.rax = 0;
        vm.handle(Exit::Hypercall, 0);
        assert_eq!(vm.vcpu.regs.rax, 1);
    }

    fn outb(vm: &mut Vm<FakeVcpu>, port: u16, value: u8, now: u64) {
        vm.vcpu.regs.rax = value as u64;
        assert_eq!(vm.handle(out(port, 1), now), Next::Continue);
    }

    /// Linux's init_8259A (vectors 0x30/0x38) and a 100 Hz PIT on channel 0.
    fn linux_like_platform(vm: &mut Vm<FakeVcpu>) {
        for (port, v) in [
            (0x21, 0xff),
            (0xa1, 0xff),
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
        ] {
            outb(vm, port, v, 0);
        }
        for (port, v) in [
            (0xa0, 0x11),
            (0xa1, 0x38),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            outb(vm, port, v, 0);
        }
        let divisor = (devices::PIT_HZ / 100) as u16;
        outb(vm, 0x43, 0x34, 0);
        outb(vm, 0x40, divisor as u8, 0);
        outb(vm, 0x40, (divisor >> 8) as u8, 0);
    }

    #[test]
    fn timer_interrupt_is_injected_when_the_guest_can_take_it() {
        let mut vm = vm();
        linux_like_platform(&mut vm);
        let deadline = vm.next_deadline_ns().expect("channel 0 runs");
        vm.vcpu.rflags = 2; // IF clear: wait for the window
        vm.prepare_entry(deadline + 1);
        assert!(vm.vcpu.interrupts.is_empty());
        assert!(vm.vcpu.window, "interrupt window requested");
        vm.vcpu.rflags = 2 | RFLAGS_IF;
        assert_eq!(
            vm.handle(Exit::InterruptWindow, deadline + 2),
            Next::Continue
        );
        vm.prepare_entry(deadline + 2);
        assert_eq!(vm.vcpu.interrupts, [0x30]);
        assert!(!vm.vcpu.window);
        // No EOI yet: IRQ 0 stays in service, nothing more is delivered.
        vm.prepare_entry(deadline + 30_000_000);
        assert_eq!(vm.vcpu.interrupts, [0x30]);
        outb(&mut vm, 0x20, 0x20, deadline + 30_000_000);
        vm.prepare_entry(deadline + 30_000_001);
        assert_eq!(vm.vcpu.interrupts, [0x30, 0x30]);
    }

    #[test]
    fn hlt_with_interrupts_enabled_waits_for_the_next_interrupt() {
        let mut vm = vm();
        linux_like_platform(&mut vm);
        vm.vcpu.rflags = 2 | RFLAGS_IF;
        assert_eq!(vm.handle(Exit::Halt, 1), Next::Yield);
        assert!(vm.halted);
        vm.prepare_entry(2);
        assert!(vm.halted, "nothing pending yet");
        let deadline = vm.next_deadline_ns().unwrap();
        vm.prepare_entry(deadline);
        assert!(!vm.halted);
        assert_eq!(vm.vcpu.interrupts, [0x30]);
    }

    #[test]
    fn uart_transmit_interrupt_reaches_irq4() {
        let mut vm = vm();
        linux_like_platform(&mut vm);
        outb(&mut vm, 0x21, 0xee, 0); // unmask IRQ 0 and 4
        outb(&mut vm, 0x3fc, 0x08, 0); // MCR.OUT2 gates the IRQ line
        outb(&mut vm, 0x3f9, 0x02, 0); // IER: THR empty
        vm.vcpu.rflags = 2 | RFLAGS_IF;
        vm.prepare_entry(1);
        assert_eq!(vm.vcpu.interrupts, [0x34]);
    }

    #[test]
    fn debug_exit_and_reset_stop_the_vm() {
        let mut vm = vm();
        vm.vcpu.regs.rax = 0x10;
        let Next::Stop(why) = vm.handle(out(0xf4, 4), 0) else {
            panic!("must stop")
        };
        assert_eq!(why, "guest wrote to the debug-exit port: exit code 33");
        let mut vm = super::tests::vm();
        vm.vcpu.regs.rax = 0xfe;
        assert!(matches!(vm.handle(out(0x64, 1), 0), Next::Stop(w) if w.contains("reset")));
    }

    #[test]
    fn console_input_reaches_the_guest() {
        let mut vm = vm();
        assert!(vm.console_input(b'x'));
        vm.handle(inp(0x3f8, 1), 0);
        assert_eq!(vm.vcpu.regs.rax & 0xff, u64::from(b'x'));
    }

    /// Places `code` at RIP 0x1000 in the fake RAM of a 32-bit protected-mode guest.
    fn at_rip(vm: &mut Vm<FakeVcpu>, code: &[u8]) {
        // SAFETY: the test RAM is the leaked, writable 4 MiB buffer of `vm()`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                code.as_ptr(),
                (vm.ram.base as *mut u8).add(0x1000),
                code.len(),
            )
        };
        vm.vcpu.rip = 0x1000;
        vm.vcpu.cr = vcpu::ControlRegs {
            cr0: 1,
            ..Default::default()
        };
    }

    #[test]
    fn apic_mmio_is_decoded_and_emulated() {
        let mut vm = vm();
        // mov eax, [0xFEE00030]: the local APIC version register.
        at_rip(&mut vm, &[0x8B, 0x05, 0x30, 0x00, 0xE0, 0xFE]);
        let fault = |gpa, write| Exit::NestedPageFault {
            gpa,
            write,
            fetch: false,
        };
        assert_eq!(vm.handle(fault(0xFEE0_0030, false), 0), Next::Continue);
        assert_eq!(vm.vcpu.regs.rax, u64::from(devices::lapic::LAPIC_VERSION));
        assert_eq!(vm.vcpu.rip, 0x1006);
        // mov dword [0xFEC00000], 1 (IOREGSEL = version), then mov ebx, [0xFEC00010].
        at_rip(
            &mut vm,
            &[0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x01, 0x00, 0x00, 0x00],
        );
        assert_eq!(vm.handle(fault(0xFEC0_0000, true), 0), Next::Continue);
        at_rip(&mut vm, &[0x8B, 0x1D, 0x10, 0x00, 0xC0, 0xFE]);
        assert_eq!(vm.handle(fault(0xFEC0_0010, false), 0), Next::Continue);
        assert_eq!(vm.vcpu.regs.rbx, u64::from(devices::ioapic::IOAPIC_VERSION));
        // A read-modify-write instruction is refused with a report, not guessed at.
        at_rip(&mut vm, &[0x83, 0x05, 0x80, 0x00, 0xE0, 0xFE, 0x01]); // add dword [..], 1
        assert!(
            matches!(vm.handle(fault(0xFEE0_0080, true), 0), Next::Stop(w) if w.contains("cannot be emulated"))
        );
    }

    #[test]
    fn lapic_timer_interrupt_is_delivered() {
        let mut vm = vm();
        vm.vcpu.rflags = 2 | RFLAGS_IF;
        // x2APIC is not offered, so program the timer through MMIO: one-shot,
        // vector 0x40, divide by 1, 1000 ticks of the 1 GHz APIC timer clock = 1 us.
        for (offset, value) in [(0x3E0u64, 0xBu32), (0x320, 0x40), (0x380, 1000)] {
            vm.lapic.mmio_write(offset, 4, value, 0);
        }
        vm.prepare_entry(500);
        assert!(vm.vcpu.interrupts.is_empty());
        vm.prepare_entry(2_000);
        assert_eq!(vm.vcpu.interrupts, [0x40]);
    }
}
