//! One virtual machine: its RAM, its vCPU, its devices and its MSR state, and the
//! vendor-neutral handling of every exit. Generic over `vcpu::Vcpu`, with no hardware
//! access of its own, so the dispatch is host-tested with a scripted vCPU.

use alloc::format;
use alloc::string::String;
use devices::{
    all_ones, LineBuffer, PortDevice, PortMap, SerialSink, Uart16550, COM1_BASE, PORT_COUNT,
};
use vcpu::{Exception, Exit, Vcpu};

use super::policy::{self, CpuidResult, MsrAccess, MsrState};
use super::stats::ExitStats;

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
}

pub struct Vm<V: Vcpu> {
    pub name: String,
    pub vcpu: V,
    com1: Uart16550<Relay>,
    ports: PortMap<Device, 4>,
    msrs: MsrState,
    pub stats: ExitStats,
    pub unknown_port_accesses: u64,
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
        out: ConsoleOut,
        host_cpuid: fn(u32, u32) -> CpuidResult,
    ) -> Self {
        let mut ports = PortMap::new();
        ports
            .register(COM1_BASE, PORT_COUNT, Device::Com1)
            .expect("an empty port map has room for COM1");
        Self {
            name: name.into(),
            vcpu,
            com1: Uart16550::new(Relay {
                name: name.into(),
                line: LineBuffer::new(),
                out,
            }),
            ports,
            msrs: MsrState::default(),
            stats: ExitStats::default(),
            unknown_port_accesses: 0,
            host_cpuid,
        }
    }

    /// Relays what the guest printed without a final newline.
    pub fn flush_console(&mut self) {
        let relay = self.com1.sink_mut();
        if let Some(line) = relay.line.flush_partial() {
            (relay.out)(&relay.name, line.text);
        }
    }

    /// Handles one exit; the vCPU is left ready for the next entry.
    pub fn handle(&mut self, exit: Exit) -> Next {
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
                let result = match self.ports.lookup(io.port) {
                    Some((Device::Com1, offset)) => {
                        self.com1.access(offset, io.size, io.write, value)
                    }
                    None => {
                        // Nothing there: reads float high, writes vanish, as on a PC bus.
                        self.unknown_port_accesses += 1;
                        all_ones(io.size)
                    }
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
                let value = match self.msrs.read(msr) {
                    MsrAccess::Value(v) => Some(v),
                    MsrAccess::Backend => self.vcpu.read_backend_msr(msr),
                    MsrAccess::Fault => None,
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
                let ok = match self.msrs.write(msr, value) {
                    MsrAccess::Value(_) => true,
                    MsrAccess::Backend => self.vcpu.write_backend_msr(msr, value),
                    MsrAccess::Fault => false,
                };
                if ok {
                    self.vcpu.skip_instruction();
                } else {
                    self.vcpu.inject_exception(Exception::GP0);
                }
                Next::Continue
            }
            Exit::Hypercall => {
                let regs = self.vcpu.regs();
                regs.rax = policy::hypercall::dispatch(regs.rax);
                self.vcpu.skip_instruction();
                Next::Continue
            }
            // No device of this VM raises interrupts yet, so nothing can wake it.
            Exit::Halt => Next::Stop(format!(
                "halted at RIP {:#x} with nothing to wake it",
                self.vcpu.rip()
            )),
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
            2
        }
        fn interrupt_ready(&self) -> bool {
            false
        }
        fn inject_interrupt(&mut self, _: u8) {}
        fn request_interrupt_window(&mut self, _: bool) {}
        fn rsp(&self) -> u64 {
            0
        }
        fn set_rsp(&mut self, _: u64) {}
        fn control_regs(&self) -> vcpu::ControlRegs {
            vcpu::ControlRegs::default()
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
        Vm::new("t", FakeVcpu::default(), capture, host)
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
            assert_eq!(vm.handle(out(0x3F8, 1)), Next::Continue);
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
        vm.handle(inp(0x1234, 1));
        assert_eq!(vm.vcpu.regs.rax, 0x1122_3344_5566_77ff);
        vm.handle(inp(0x1234, 2));
        assert_eq!(vm.vcpu.regs.rax, 0x1122_3344_5566_ffff);
        vm.handle(inp(0x1234, 4));
        assert_eq!(vm.vcpu.regs.rax, 0xffff_ffff);
        vm.handle(out(0x1234, 4));
        assert_eq!(vm.unknown_port_accesses, 4);
        assert_eq!(vm.stats.count(vcpu::ExitKind::PortIo), 4);
    }

    #[test]
    fn cpuid_goes_through_the_policy() {
        let mut vm = vm();
        vm.vcpu.regs.rbx = u64::MAX;
        vm.handle(Exit::Cpuid {
            leaf: 0x4000_0000,
            subleaf: 0,
        });
        assert_eq!(vm.vcpu.regs.rax, 0x4000_0001);
        assert_eq!(vm.vcpu.regs.rbx, u32::from_le_bytes(*b"hv-b") as u64);
        vm.handle(Exit::Cpuid {
            leaf: 1,
            subleaf: 0,
        });
        assert_eq!(vm.vcpu.regs.rcx & (1 << 5), 0);
        assert_eq!(vm.vcpu.skipped, 2);
    }

    #[test]
    fn msrs_allowed_forbidden_and_backend() {
        let mut vm = vm();
        vm.handle(Exit::Rdmsr { msr: 0x1B });
        assert_eq!(vm.vcpu.regs.rax, 0xFEE0_0900);
        assert_eq!(vm.vcpu.regs.rdx, 0);
        vm.handle(Exit::Rdmsr { msr: 0xC001_0117 });
        vm.handle(Exit::Wrmsr {
            msr: 0xC001_0114,
            value: 0,
        });
        assert_eq!(vm.vcpu.injected, [Exception::GP0, Exception::GP0]);
        vm.handle(Exit::Wrmsr {
            msr: policy::IA32_EFER,
            value: 0xD00,
        });
        assert_eq!(vm.vcpu.efer, 0xD00);
        vm.handle(Exit::Wrmsr {
            msr: policy::IA32_EFER,
            value: 1 << 12,
        });
        assert_eq!(vm.vcpu.efer, 0xD00, "SVME refused");
        assert_eq!(vm.vcpu.injected.len(), 3);
        assert_eq!(vm.vcpu.skipped, 2);
    }

    #[test]
    fn fatal_exits_stop_the_vm_with_a_reason() {
        let mut vm = vm();
        vm.vcpu.rip = 0x10_0040;
        let Next::Stop(why) = vm.handle(Exit::NestedPageFault {
            gpa: 0x3000_0000,
            write: true,
            fetch: false,
        }) else {
            panic!("must stop")
        };
        assert_eq!(
            why,
            "write outside its memory: guest-physical 0x30000000 at RIP 0x100040"
        );
        assert!(
            matches!(vm.handle(Exit::Shutdown), Next::Stop(w) if w.starts_with("triple fault"))
        );
        assert!(matches!(vm.handle(Exit::Halt), Next::Stop(_)));
        assert_eq!(vm.handle(Exit::ExternalInterrupt), Next::Yield);
        assert_eq!(vm.handle(Exit::VirtInstruction), Next::Continue);
        assert_eq!(vm.vcpu.injected, [Exception::UD]);
        vm.vcpu.regs.rax = 0;
        vm.handle(Exit::Hypercall);
        assert_eq!(vm.vcpu.regs.rax, 1);
    }
}
