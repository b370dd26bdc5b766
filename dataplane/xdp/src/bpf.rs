//! The XDP program, assembled here as eBPF bytecode (there is no clang on
//! the build machines, and the program is 25 instructions).
//!
//! It redirects an Ethernet frame to the AF_XDP socket of its receive queue
//! (`bpf_redirect_map(xskmap, ctx->rx_queue_index, XDP_PASS)`) only when it is
//! untagged IPv4 without options, not an IP fragment, UDP, to the configured
//! destination port. Everything else (ARP, ICMP, TCP, other UDP ports, VLAN
//! tags, IP options and fragments) gets `XDP_PASS` and goes on to the kernel
//! stack, as does a frame for our port on a queue with no socket in the map
//! (the flags argument of `bpf_redirect_map` is the action on a failed
//! lookup). Each read of packet bytes follows one check that all 42 header
//! bytes lie before `data_end`, which is what the verifier needs to accept
//! the loads.
//!
//! Pure: encoding only. [`tests`] runs the program in a small interpreter of
//! the instructions it uses, over sample frames.

/// `struct bpf_insn`: opcode, destination and source registers (low and high nibble), offset,
/// immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (class | size/op | mode/source).
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const AND64_K: u8 = 0x57;
const JGT_X: u8 = 0x2d;
const JNE_K: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
/// `src_reg` of a `LD_IMM64` whose immediate is a map file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// `bpf_redirect_map` helper id.
const FUNC_REDIRECT_MAP: i32 = 51;
/// `XDP_PASS`.
pub const XDP_PASS: i32 = 2;

/// Offsets in `struct xdp_md`.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE_INDEX: i16 = 16;

/// Ethernet (14) + IPv4 without options (20) + UDP (8).
const HEADERS_CHECKED: i32 = 42;

/// A forward jump whose target is resolved at the end.
struct Fixup {
    at: usize,
    label: usize,
}

#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    fixups: Vec<Fixup>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        debug_assert!(dst < 11 && src < 11, "register out of range");
        self.insns.push(Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        });
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: usize) {
        self.fixups.push(Fixup {
            at: self.insns.len(),
            label,
        });
        self.emit(code, dst, src, 0, imm);
    }
    fn finish(mut self) -> Vec<Insn> {
        for f in &self.fixups {
            let target = self.labels[f.label].expect("jump to an unbound label");
            let off = target as isize - (f.at as isize + 1);
            self.insns[f.at].off = i16::try_from(off).expect("jump within i16 range");
        }
        self.insns
    }
}

/// The redirect program for UDP destination port `port`, with the XSKMAP's file descriptor
/// patched into its map load.
pub fn xsk_redirect_program(port: u16, xskmap_fd: i32) -> Vec<Insn> {
    // Packet halfwords are loaded as little-endian u16 (the machine's order); compare them with
    // the network-order value read the same way.
    let be16 = |v: u16| i32::from(u16::from_le_bytes(v.to_be_bytes()));
    let mut a = Asm::default();
    let pass = a.label();
    a.emit(MOV64_X, 6, 1, 0, 0); // r6 = ctx
    a.emit(LDX_W, 2, 6, MD_DATA, 0); // r2 = data
    a.emit(LDX_W, 3, 6, MD_DATA_END, 0); // r3 = data_end
    a.emit(MOV64_X, 4, 2, 0, 0); // r4 = data
    a.emit(ADD64_K, 4, 0, 0, HEADERS_CHECKED); // r4 = data + 42
    a.jump(JGT_X, 4, 3, 0, pass); // if data + 42 > data_end: pass
    a.emit(LDX_H, 5, 2, 12, 0); // ethertype
    a.jump(JNE_K, 5, 0, be16(0x0800), pass);
    a.emit(LDX_B, 5, 2, 14, 0); // version 4, header length 5 words (no options)
    a.jump(JNE_K, 5, 0, 0x45, pass);
    a.emit(LDX_B, 5, 2, 23, 0); // protocol
    a.jump(JNE_K, 5, 0, 17, pass);
    a.emit(LDX_H, 5, 2, 20, 0); // flags + fragment offset: MF or a non-zero offset -> kernel
    a.emit(AND64_K, 5, 0, 0, be16(0x3fff));
    a.jump(JNE_K, 5, 0, 0, pass);
    a.emit(LDX_H, 5, 2, 36, 0); // UDP destination port
    a.jump(JNE_K, 5, 0, be16(port), pass);
    a.emit(LDX_W, 2, 6, MD_RX_QUEUE_INDEX, 0); // r2 = key = rx queue
    a.emit(LD_IMM64, 1, PSEUDO_MAP_FD, 0, xskmap_fd); // r1 = map
    a.emit(0, 0, 0, 0, 0); // second half of the 64-bit load
    a.emit(MOV64_K, 3, 0, 0, XDP_PASS); // r3 = action if the queue has no socket
    a.emit(CALL, 0, 0, 0, FUNC_REDIRECT_MAP);
    a.emit(EXIT, 0, 0, 0, 0);
    a.bind(pass);
    a.emit(MOV64_K, 0, 0, 0, XDP_PASS);
    a.emit(EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What the program decided for a frame.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Verdict {
        Pass,
        Redirect { map_fd: i32, queue: u32 },
    }

    const CTX: u64 = 0x1_0000_0000;
    const DATA: u64 = 0x2_0000_0000;

    /// Runs the instructions the program uses over `frame` received on `queue`. Panics on a read
    /// outside the frame (the verifier would have refused the program) or an unknown opcode.
    pub fn run(prog: &[Insn], frame: &[u8], queue: u32) -> Verdict {
        let mut r = [0u64; 11];
        let mut map_fd = None;
        r[1] = CTX;
        let mut pc = 0usize;
        for _ in 0..1000 {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            let load = |addr: u64, size: usize| -> u64 {
                if (CTX..CTX + 24).contains(&addr) {
                    return match addr - CTX {
                        0 => DATA,
                        4 => DATA + frame.len() as u64,
                        16 => u64::from(queue),
                        other => panic!("unexpected ctx offset {other}"),
                    };
                }
                let off = (addr - DATA) as usize;
                assert!(off + size <= frame.len(), "read past the frame at {off}+{size}");
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(&frame[off..off + size]);
                u64::from_le_bytes(v)
            };
            let target = |pc: usize| (pc as isize + isize::from(i.off)) as usize;
            match i.code {
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = i.imm as i64 as u64,
                ADD64_K => r[dst] = r[dst].wrapping_add(i.imm as i64 as u64),
                AND64_K => r[dst] &= i.imm as i64 as u64,
                LDX_W => r[dst] = load(r[src].wrapping_add(i.off as i64 as u64), 4),
                LDX_H => r[dst] = load(r[src].wrapping_add(i.off as i64 as u64), 2),
                LDX_B => r[dst] = load(r[src].wrapping_add(i.off as i64 as u64), 1),
                JGT_X => {
                    if r[dst] > r[src] {
                        pc = target(pc)
                    }
                }
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc = target(pc)
                    }
                }
                LD_IMM64 => {
                    assert_eq!(src, usize::from(PSEUDO_MAP_FD));
                    map_fd = Some(i.imm);
                    r[dst] = 0xdead_0000;
                    pc += 1;
                }
                CALL => {
                    assert_eq!(i.imm, FUNC_REDIRECT_MAP);
                    assert_eq!(r[1], 0xdead_0000, "r1 is the map");
                    assert_eq!(r[3], XDP_PASS as u64, "failed lookup falls back to XDP_PASS");
                    return Verdict::Redirect {
                        map_fd: map_fd.expect("map loaded"),
                        queue: r[2] as u32,
                    };
                }
                EXIT => {
                    assert_eq!(r[0], XDP_PASS as u64);
                    return Verdict::Pass;
                }
                other => panic!("opcode {other:#x} not in the interpreter"),
            }
        }
        panic!("program did not finish");
    }

    fn udp_frame(dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[20] = 0x40; // DF
        f[23] = 17;
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn redirects_only_udp_to_the_port() {
        let prog = xsk_redirect_program(7531, 42);
        assert_eq!(
            run(&prog, &udp_frame(7531), 3),
            Verdict::Redirect { map_fd: 42, queue: 3 }
        );
        assert_eq!(run(&prog, &udp_frame(7532), 0), Verdict::Pass);
        let mut tcp = udp_frame(7531);
        tcp[23] = 6;
        assert_eq!(run(&prog, &tcp, 0), Verdict::Pass);
        let mut arp = udp_frame(7531);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&prog, &arp, 0), Verdict::Pass);
        let mut options = udp_frame(7531);
        options[14] = 0x46;
        assert_eq!(run(&prog, &options, 0), Verdict::Pass);
        let mut more_fragments = udp_frame(7531);
        more_fragments[20] = 0x20;
        assert_eq!(run(&prog, &more_fragments, 0), Verdict::Pass);
        let mut later_fragment = udp_frame(7531);
        later_fragment[21] = 0x01;
        assert_eq!(run(&prog, &later_fragment, 0), Verdict::Pass);
        let mut vlan = udp_frame(7531);
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert_eq!(run(&prog, &vlan, 0), Verdict::Pass);
    }

    #[test]
    fn short_frames_pass_without_reading_past_the_end() {
        let prog = xsk_redirect_program(7531, 42);
        let full = udp_frame(7531);
        for len in 0..42 {
            assert_eq!(run(&prog, &full[..len], 0), Verdict::Pass, "len {len}");
        }
        assert_eq!(
            run(&prog, &full[..42], 0),
            Verdict::Redirect { map_fd: 42, queue: 0 }
        );
    }

    #[test]
    fn encoding_of_the_map_load() {
        let prog = xsk_redirect_program(1, 9);
        let at = prog.iter().position(|i| i.code == LD_IMM64).expect("map load");
        assert_eq!(
            prog[at],
            Insn {
                code: 0x18,
                regs: 0x11,
                off: 0,
                imm: 9
            }
        );
        assert_eq!(
            prog[at + 1],
            Insn {
                code: 0,
                regs: 0,
                off: 0,
                imm: 0
            }
        );
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}
