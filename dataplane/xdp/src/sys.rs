//! Every `unsafe` line of the crate: the declarations of the few libxdp and
//! libbpf functions used (written out by hand from `<xdp/xsk.h>`,
//! `<bpf/bpf.h>` and `<bpf/libbpf.h>` of Debian libxdp-dev 1.3.1 and
//! libbpf-dev 1.1.2; no bindgen), the four XSK rings, the UMEM mapping, and
//! the ioctls and socket options of the interface.
//!
//! The rings are reimplemented here over the memory libxdp maps (the
//! header's `xsk_ring_prod__reserve` and friends are inline functions): a
//! producer writes its entries, then publishes the new producer index with a
//! Release store; a consumer reads the other side's index with an Acquire
//! load before it reads entries, and hands them back with a Release store of
//! its consumer index. Each side keeps cached copies of both indexes so the
//! shared cache lines are touched only when the cache runs dry, as the
//! header does.
//!
//! Everything here is safe to call: each wrapper states the invariant that
//! makes its `unsafe` block sound.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bpf::Insn;

// ---- C declarations ---------------------------------------------------------------------------

/// `struct xsk_ring_prod` / `struct xsk_ring_cons` of `<xdp/xsk.h>` (same layout for both).
#[repr(C)]
struct RawRing {
    cached_prod: u32,
    cached_cons: u32,
    mask: u32,
    size: u32,
    producer: *mut u32,
    consumer: *mut u32,
    ring: *mut c_void,
    flags: *mut u32,
}

impl RawRing {
    fn empty() -> Self {
        RawRing {
            cached_prod: 0,
            cached_cons: 0,
            mask: 0,
            size: 0,
            producer: std::ptr::null_mut(),
            consumer: std::ptr::null_mut(),
            ring: std::ptr::null_mut(),
            flags: std::ptr::null_mut(),
        }
    }
}

#[repr(C)]
struct XskUmemConfig {
    fill_size: u32,
    comp_size: u32,
    frame_size: u32,
    frame_headroom: u32,
    flags: u32,
}

#[repr(C)]
struct XskSocketConfig {
    rx_size: u32,
    tx_size: u32,
    libxdp_flags: u32,
    xdp_flags: u32,
    bind_flags: u16,
    /// Explicit, zeroed padding.
    pad: u16,
}

/// `struct bpf_prog_load_opts` of libbpf 1.1 (104 bytes; libbpf checks `sz`).
#[repr(C)]
struct BpfProgLoadOpts {
    sz: usize,
    attempts: c_int,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    prog_flags: u32,
    prog_ifindex: u32,
    kern_version: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    attach_btf_obj_fd: u32,
    /// Explicit, zeroed padding before the pointer.
    pad: u32,
    fd_array: *const c_int,
    func_info: *const c_void,
    func_info_cnt: u32,
    func_info_rec_size: u32,
    line_info: *const c_void,
    line_info_cnt: u32,
    line_info_rec_size: u32,
    log_level: u32,
    log_size: u32,
    log_buf: *mut c_char,
}

/// `struct bpf_xdp_attach_opts` of libbpf 1.1.
#[repr(C)]
struct BpfXdpAttachOpts {
    sz: usize,
    old_prog_fd: c_int,
    /// Explicit, zeroed padding: libbpf refuses options with non-zero bytes past the last field
    /// it knows.
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
/// `struct xdp_statistics` of `<linux/if_xdp.h>`: the kernel's drop counters of one socket.
pub struct XdpStatistics {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

#[repr(C)]
struct XdpDesc {
    addr: u64,
    len: u32,
    options: u32,
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

enum XskUmemHandle {}
enum XskSocketHandle {}

#[link(name = "xdp")]
extern "C" {
    fn xsk_umem__create(
        umem: *mut *mut XskUmemHandle,
        area: *mut c_void,
        size: u64,
        fill: *mut RawRing,
        comp: *mut RawRing,
        config: *const XskUmemConfig,
    ) -> c_int;
    fn xsk_umem__delete(umem: *mut XskUmemHandle) -> c_int;
    fn xsk_socket__create(
        xsk: *mut *mut XskSocketHandle,
        ifname: *const c_char,
        queue_id: u32,
        umem: *mut XskUmemHandle,
        rx: *mut RawRing,
        tx: *mut RawRing,
        config: *const XskSocketConfig,
    ) -> c_int;
    fn xsk_socket__delete(xsk: *mut XskSocketHandle);
    fn xsk_socket__fd(xsk: *const XskSocketHandle) -> c_int;
}

#[link(name = "bpf")]
extern "C" {
    fn bpf_map_create(
        map_type: u32,
        map_name: *const c_char,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        opts: *const c_void,
    ) -> c_int;
    fn bpf_prog_load(
        prog_type: u32,
        prog_name: *const c_char,
        license: *const c_char,
        insns: *const Insn,
        insn_cnt: usize,
        opts: *const BpfProgLoadOpts,
    ) -> c_int;
    fn bpf_map_update_elem(fd: c_int, key: *const c_void, value: *const c_void, flags: u64) -> c_int;
    fn bpf_map_delete_elem(fd: c_int, key: *const c_void) -> c_int;
    fn bpf_xdp_attach(ifindex: c_int, prog_fd: c_int, flags: u32, opts: *const BpfXdpAttachOpts) -> c_int;
    fn bpf_xdp_detach(ifindex: c_int, flags: u32, opts: *const BpfXdpAttachOpts) -> c_int;
    fn bpf_xdp_query_id(ifindex: c_int, flags: c_int, prog_id: *mut u32) -> c_int;
    fn bpf_prog_get_fd_by_id(id: u32) -> c_int;
    fn bpf_obj_get_info_by_fd(fd: c_int, info: *mut c_void, info_len: *mut u32) -> c_int;
}

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const SOL_XDP: c_int = 283;
const XDP_STATISTICS: c_int = 7;
const XDP_RING_NEED_WAKEUP: u32 = 1;
const XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD: u32 = 1;
/// `bind()` flags of `<linux/if_xdp.h>`.
pub const XDP_COPY: u16 = 1 << 1;
pub const XDP_ZEROCOPY: u16 = 1 << 2;
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// `XDP_FLAGS_*` of `<linux/if_link.h>`.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// Offset of `name[16]` in `struct bpf_prog_info`.
const PROG_INFO_NAME_OFFSET: usize = 64;

/// libbpf and libxdp return `-errno`; some older paths return -1 and set errno.
fn neg_errno(rc: c_int) -> i32 {
    if rc < -1 {
        -rc
    } else {
        io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
    }
}

// ---- BPF objects ------------------------------------------------------------------------------

/// A new XSKMAP with `entries` slots (queue index -> AF_XDP socket).
pub fn xskmap_create(name: &CStr, entries: u32) -> Result<OwnedFd, i32> {
    // SAFETY: plain values and a NUL-terminated name; NULL opts means defaults.
    let fd = unsafe {
        bpf_map_create(
            BPF_MAP_TYPE_XSKMAP,
            name.as_ptr(),
            4,
            4,
            entries,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return Err(neg_errno(fd));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads an XDP program. On failure returns the errno and the verifier's log.
pub fn xdp_prog_load(name: &CStr, license: &CStr, insns: &[Insn]) -> Result<OwnedFd, (i32, String)> {
    let mut log = vec![0u8; 64 * 1024];
    let opts = BpfProgLoadOpts {
        sz: std::mem::size_of::<BpfProgLoadOpts>(),
        attempts: 0,
        expected_attach_type: 0,
        prog_btf_fd: 0,
        prog_flags: 0,
        prog_ifindex: 0,
        kern_version: 0,
        attach_btf_id: 0,
        attach_prog_fd: 0,
        attach_btf_obj_fd: 0,
        pad: 0,
        fd_array: std::ptr::null(),
        func_info: std::ptr::null(),
        func_info_cnt: 0,
        func_info_rec_size: 0,
        line_info: std::ptr::null(),
        line_info_cnt: 0,
        line_info_rec_size: 0,
        log_level: 1,
        log_size: u32::try_from(log.len()).expect("log buffer fits u32"),
        log_buf: log.as_mut_ptr().cast(),
    };
    // SAFETY: `insns` is a live slice of `Insn` (layout of `struct bpf_insn`); `opts` and the log
    // buffer outlive the call.
    let fd = unsafe {
        bpf_prog_load(
            BPF_PROG_TYPE_XDP,
            name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len(),
            &opts,
        )
    };
    if fd < 0 {
        let errno = neg_errno(fd);
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        return Err((errno, String::from_utf8_lossy(&log[..end]).into_owned()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `map[key] = value` for a map with u32 keys and values.
pub fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> Result<(), i32> {
    // SAFETY: key and value point at 4-byte values, the map's key and value size.
    let rc = unsafe {
        bpf_map_update_elem(
            map.as_raw_fd(),
            (&key as *const u32).cast(),
            (&value as *const u32).cast(),
            0,
        )
    };
    if rc < 0 {
        Err(neg_errno(rc))
    } else {
        Ok(())
    }
}

/// Deletes `map[key]` for a map with u32 keys.
pub fn map_delete_u32(map: BorrowedFd<'_>, key: u32) -> Result<(), i32> {
    // SAFETY: key points at a 4-byte value, the map's key size.
    let rc = unsafe { bpf_map_delete_elem(map.as_raw_fd(), (&key as *const u32).cast()) };
    if rc < 0 {
        Err(neg_errno(rc))
    } else {
        Ok(())
    }
}

/// Attaches `prog` to the interface (netlink, in the calling thread's network namespace).
pub fn xdp_attach(ifindex: u32, prog: BorrowedFd<'_>, flags: u32) -> Result<(), i32> {
    let ifindex = c_int::try_from(ifindex).map_err(|_| libc::EINVAL)?;
    // SAFETY: plain values; NULL opts is allowed.
    let rc = unsafe { bpf_xdp_attach(ifindex, prog.as_raw_fd(), flags, std::ptr::null()) };
    if rc < 0 {
        Err(neg_errno(rc))
    } else {
        Ok(())
    }
}

/// Detaches the program of mode `flags`; with `expected` set, only if that program is the one
/// attached (`XDP_FLAGS_REPLACE`), so a program someone attached since is left alone.
pub fn xdp_detach(ifindex: u32, flags: u32, expected: Option<BorrowedFd<'_>>) -> Result<(), i32> {
    let ifindex = c_int::try_from(ifindex).map_err(|_| libc::EINVAL)?;
    let opts = BpfXdpAttachOpts {
        sz: std::mem::size_of::<BpfXdpAttachOpts>(),
        old_prog_fd: expected.map_or(0, |fd| fd.as_raw_fd()),
        pad: 0,
    };
    let flags = if expected.is_some() {
        flags | XDP_FLAGS_REPLACE
    } else {
        flags
    };
    // SAFETY: `opts` outlives the call.
    let rc = unsafe { bpf_xdp_detach(ifindex, flags, &opts) };
    if rc < 0 {
        Err(neg_errno(rc))
    } else {
        Ok(())
    }
}

/// The id of the program attached in mode `flags` (0: none).
pub fn xdp_query_id(ifindex: u32, flags: u32) -> Result<u32, i32> {
    let ifindex = c_int::try_from(ifindex).map_err(|_| libc::EINVAL)?;
    let mut id = 0u32;
    // SAFETY: `id` is a valid out-pointer.
    let rc = unsafe { bpf_xdp_query_id(ifindex, flags as c_int, &mut id) };
    if rc < 0 {
        Err(neg_errno(rc))
    } else {
        Ok(id)
    }
}

/// The name the program with this id was loaded under.
pub fn prog_name(id: u32) -> Result<String, i32> {
    // SAFETY: plain value.
    let fd = unsafe { bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(neg_errno(fd));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    prog_info(fd.as_fd()).map(|(_, name)| name)
}

/// The id and name of a loaded program.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<(u32, String), i32> {
    // Ask only for the fields up to the name: the kernel fills min(len, its size).
    let mut info = [0u8; PROG_INFO_NAME_OFFSET + 16];
    let mut len = info.len() as u32;
    // SAFETY: `info` is writable for `len` bytes.
    let rc = unsafe { bpf_obj_get_info_by_fd(fd.as_raw_fd(), info.as_mut_ptr().cast(), &mut len) };
    if rc < 0 {
        return Err(neg_errno(rc));
    }
    let id = u32::from_ne_bytes([info[4], info[5], info[6], info[7]]);
    let name = &info[PROG_INFO_NAME_OFFSET..];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok((id, String::from_utf8_lossy(&name[..end]).into_owned()))
}

// ---- Interfaces and namespaces ----------------------------------------------------------------

/// The interface's index in the calling thread's network namespace, if it exists.
pub fn ifindex(name: &CStr) -> Option<u32> {
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn ifreq_for(name: &CStr) -> io::Result<libc::ifreq> {
    let bytes = name.to_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as c_char;
    }
    Ok(req)
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain values.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's MAC address (SIOCGIFHWADDR).
pub fn if_hwaddr(name: &CStr) -> io::Result<[u8; 6]> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: `req` is a valid ifreq for this request.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// The interface's MTU (SIOCGIFMTU).
pub fn if_mtu(name: &CStr) -> io::Result<u32> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: `req` is a valid ifreq for this request.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// The interface's (first) IPv4 address (SIOCGIFADDR); `EADDRNOTAVAIL` if it has none.
pub fn if_ipv4(name: &CStr) -> io::Result<std::net::Ipv4Addr> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: `req` is a valid ifreq for this request.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFADDR filled the addr member of the union with a `sockaddr_in` (AF_INET
    // socket), which fits in a `sockaddr`.
    let sin: libc::sockaddr_in =
        unsafe { std::ptr::read_unaligned((&req.ifr_ifru.ifru_addr as *const libc::sockaddr).cast()) };
    if i32::from(sin.sin_family) != libc::AF_INET {
        return Err(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL));
    }
    Ok(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
}

/// The number of queues an AF_XDP socket may bind to (ETHTOOL_GCHANNELS): the kernel requires
/// the queue to be below both the real rx and tx queue counts. `None` if the driver does not
/// report channels.
pub fn if_queue_count(name: &CStr) -> io::Result<Option<u32>> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: `req` points at `channels`, which outlives the call and has the layout of
    // `struct ethtool_channels`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(
        channels.rx_count.min(channels.tx_count) + channels.combined_count,
    ))
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/var/run/netns/NAME`, as `ip netns add` makes). Sockets, interface lookups and XDP attach
/// made by this thread afterwards act in that namespace. For tests and tools.
pub fn enter_netns(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a valid namespace descriptor; CLONE_NEWNET is allowed in a threaded process.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open handle on the calling thread's network namespace.
pub fn current_netns() -> io::Result<std::fs::File> {
    std::fs::File::open("/proc/thread-self/ns/net")
}

/// Moves the calling thread into the namespace of `ns` (from [`current_netns`]).
pub fn set_netns(ns: &std::fs::File) -> io::Result<()> {
    // SAFETY: a valid namespace descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// RLIMIT_MEMLOCK (soft) of this process, in bytes.
pub fn memlock_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } < 0 {
        return 0;
    }
    lim.rlim_cur
}

// ---- UMEM and rings ---------------------------------------------------------------------------

/// Sizes of one socket's UMEM and rings (all powers of two; checked by the caller).
#[derive(Clone, Copy, Debug)]
pub struct XskSpec {
    pub chunk_bytes: u32,
    pub chunks: u32,
    pub fill: u32,
    pub comp: u32,
    pub rx: u32,
    pub tx: u32,
    pub bind_flags: u16,
}

/// Which step of [`Xsk::create`] failed, and its errno.
#[derive(Clone, Copy, Debug)]
pub enum CreateFailure {
    Mmap(i32),
    Umem(i32),
    Socket(i32),
}

/// One AF_XDP socket with its own UMEM: an anonymous mapping registered with the kernel, and the
/// fill, completion, rx and tx rings. Owns everything; `Drop` closes the socket, unregisters the
/// UMEM and unmaps it, in that order.
pub struct Xsk {
    area: *mut u8,
    area_bytes: usize,
    umem: *mut XskUmemHandle,
    xsk: *mut XskSocketHandle,
    fd: RawFd,
    // Boxed: libxdp keeps pointers to the fill and completion ring structs.
    fill: Box<RawRing>,
    comp: Box<RawRing>,
    rx: Box<RawRing>,
    tx: Box<RawRing>,
}

impl Xsk {
    /// Maps the UMEM, registers it and binds a socket to `queue` of `ifname` with
    /// `spec.bind_flags`, without loading any XDP program (the caller owns the program and puts
    /// the socket in its XSKMAP).
    pub fn create(ifname: &CStr, queue: u32, spec: XskSpec) -> Result<Xsk, CreateFailure> {
        let area_bytes = spec.chunk_bytes as usize * spec.chunks as usize;
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED below.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                area_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(CreateFailure::Mmap(
                io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM),
            ));
        }
        let mut xsk = Xsk {
            area: area.cast(),
            area_bytes,
            umem: std::ptr::null_mut(),
            xsk: std::ptr::null_mut(),
            fd: -1,
            fill: Box::new(RawRing::empty()),
            comp: Box::new(RawRing::empty()),
            rx: Box::new(RawRing::empty()),
            tx: Box::new(RawRing::empty()),
        };
        let umem_config = XskUmemConfig {
            fill_size: spec.fill,
            comp_size: spec.comp,
            frame_size: spec.chunk_bytes,
            frame_headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is mapped for `area_bytes` and lives as long as `xsk`, which deletes
        // the UMEM before unmapping it; the ring structs are boxed so their addresses are stable.
        let rc = unsafe {
            xsk_umem__create(
                &mut xsk.umem,
                area,
                area_bytes as u64,
                &mut *xsk.fill,
                &mut *xsk.comp,
                &umem_config,
            )
        };
        if rc != 0 {
            xsk.umem = std::ptr::null_mut();
            return Err(CreateFailure::Umem(neg_errno(rc)));
        }
        let socket_config = XskSocketConfig {
            rx_size: spec.rx,
            tx_size: spec.tx,
            libxdp_flags: XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD,
            xdp_flags: 0,
            bind_flags: spec.bind_flags,
            pad: 0,
        };
        // SAFETY: the UMEM handle is live; the ring structs are boxed and owned by `xsk`.
        let rc = unsafe {
            xsk_socket__create(
                &mut xsk.xsk,
                ifname.as_ptr(),
                queue,
                xsk.umem,
                &mut *xsk.rx,
                &mut *xsk.tx,
                &socket_config,
            )
        };
        if rc != 0 {
            xsk.xsk = std::ptr::null_mut();
            return Err(CreateFailure::Socket(neg_errno(rc)));
        }
        // SAFETY: a live socket handle.
        xsk.fd = unsafe { xsk_socket__fd(xsk.xsk) };
        Ok(xsk)
    }

    /// The socket's descriptor (for the XSKMAP).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The UMEM bytes from `offset`, `len` long. The caller may only read a chunk it owns: one the
    /// rx ring handed over and that has not been put back on the fill ring.
    pub fn area(&self, offset: u64, len: usize) -> &[u8] {
        let offset = usize::try_from(offset).expect("UMEM offset fits usize");
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.area_bytes),
            "UMEM range out of bounds"
        );
        // SAFETY: in bounds of the mapping (checked above), which lives as long as `self`. The
        // kernel writes only chunks on the fill ring, which the caller does not read.
        unsafe { std::slice::from_raw_parts(self.area.add(offset), len) }
    }

    /// The UMEM bytes from `offset`, `len` long, to write a tx chunk the caller owns (not on the
    /// tx ring, or completed).
    pub fn area_mut(&mut self, offset: u64, len: usize) -> &mut [u8] {
        let offset = usize::try_from(offset).expect("UMEM offset fits usize");
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.area_bytes),
            "UMEM range out of bounds"
        );
        // SAFETY: as in `area`; `&mut self` keeps other slices of ours from aliasing, and the
        // kernel reads a tx chunk only after it is submitted.
        unsafe { std::slice::from_raw_parts_mut(self.area.add(offset), len) }
    }

    /// Reserves up to `n` fill entries; returns (reserved, first index).
    pub fn fill_reserve(&mut self, n: u32) -> (u32, u32) {
        prod_reserve(&mut self.fill, n)
    }

    /// Writes fill entry `idx` (reserved) with a chunk address.
    pub fn fill_set(&mut self, idx: u32, addr: u64) {
        let ring = &*self.fill;
        // SAFETY: the fill ring holds `size` u64 entries; the index is masked into range.
        unsafe { *ring.ring.cast::<u64>().add((idx & ring.mask) as usize) = addr };
    }

    pub fn fill_submit(&mut self, n: u32) {
        prod_submit(&self.fill, n);
    }

    pub fn fill_needs_wakeup(&self) -> bool {
        needs_wakeup(&self.fill)
    }

    /// Takes up to `n` completed tx chunks; returns (count, first index).
    pub fn comp_peek(&mut self, n: u32) -> (u32, u32) {
        cons_peek(&mut self.comp, n)
    }

    pub fn comp_addr(&self, idx: u32) -> u64 {
        let ring = &*self.comp;
        // SAFETY: the completion ring holds `size` u64 entries; the index is masked into range.
        unsafe { *ring.ring.cast::<u64>().add((idx & ring.mask) as usize) }
    }

    pub fn comp_release(&mut self, n: u32) {
        cons_release(&self.comp, n);
    }

    /// Takes up to `n` received descriptors; returns (count, first index).
    pub fn rx_peek(&mut self, n: u32) -> (u32, u32) {
        cons_peek(&mut self.rx, n)
    }

    /// Received descriptor `idx` (peeked): (UMEM address, length).
    pub fn rx_desc(&self, idx: u32) -> (u64, u32) {
        let ring = &*self.rx;
        // SAFETY: the rx ring holds `size` descriptors; the index is masked into range.
        let desc = unsafe { &*ring.ring.cast::<XdpDesc>().add((idx & ring.mask) as usize) };
        (desc.addr, desc.len)
    }

    pub fn rx_release(&mut self, n: u32) {
        cons_release(&self.rx, n);
    }

    /// Reserves up to `n` tx descriptors; returns (reserved, first index).
    pub fn tx_reserve(&mut self, n: u32) -> (u32, u32) {
        prod_reserve(&mut self.tx, n)
    }

    /// Writes tx descriptor `idx` (reserved).
    pub fn tx_set(&mut self, idx: u32, addr: u64, len: u32) {
        let ring = &*self.tx;
        // SAFETY: the tx ring holds `size` descriptors; the index is masked into range.
        unsafe {
            *ring.ring.cast::<XdpDesc>().add((idx & ring.mask) as usize) = XdpDesc {
                addr,
                len,
                options: 0,
            }
        };
    }

    pub fn tx_submit(&mut self, n: u32) {
        prod_submit(&self.tx, n);
    }

    pub fn tx_needs_wakeup(&self) -> bool {
        needs_wakeup(&self.tx)
    }

    /// Descriptors submitted on the tx ring that the kernel has not consumed yet.
    pub fn tx_unconsumed(&self) -> u32 {
        let ring = &*self.tx;
        // SAFETY: producer and consumer point into the mapped ring, live as long as `self`.
        let (prod, cons) = unsafe {
            (
                AtomicU32::from_ptr(ring.producer).load(Ordering::Relaxed),
                AtomicU32::from_ptr(ring.consumer).load(Ordering::Acquire),
            )
        };
        prod.wrapping_sub(cons)
    }

    /// Asks the kernel to send what is on the tx ring (copy mode sends only when asked, at most
    /// 32 descriptors per call).
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: sendto with no buffer on our own socket.
        let rc = unsafe {
            libc::sendto(
                self.fd,
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Asks the driver to take fill entries (needed only when it set the need-wakeup flag).
    pub fn wake_rx(&self) {
        // SAFETY: recvfrom with no buffer on our own socket; the result does not matter.
        unsafe {
            libc::recvfrom(
                self.fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's drop counters of this socket (getsockopt XDP_STATISTICS).
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        let mut stats = XdpStatistics::default();
        let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
        // SAFETY: `stats` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd,
                SOL_XDP,
                XDP_STATISTICS,
                (&mut stats as *mut XdpStatistics).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stats)
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: each handle is either null or live and owned by `self`; the socket goes before
        // the UMEM it uses, and the mapping after both.
        unsafe {
            if !self.xsk.is_null() {
                xsk_socket__delete(self.xsk);
            }
            if !self.umem.is_null() {
                xsk_umem__delete(self.umem);
            }
            libc::munmap(self.area.cast(), self.area_bytes);
        }
    }
}

fn prod_reserve(ring: &mut RawRing, n: u32) -> (u32, u32) {
    let mut free = ring.cached_cons.wrapping_sub(ring.cached_prod);
    if free < n {
        // SAFETY: `consumer` points into the ring mapping, live while the socket is.
        let cons = unsafe { AtomicU32::from_ptr(ring.consumer).load(Ordering::Acquire) };
        // Cached consumer is kept `size` ahead, as in the header, so free = cached_cons - prod.
        ring.cached_cons = cons.wrapping_add(ring.size);
        free = ring.cached_cons.wrapping_sub(ring.cached_prod);
    }
    let n = n.min(free);
    let idx = ring.cached_prod;
    ring.cached_prod = ring.cached_prod.wrapping_add(n);
    (n, idx)
}

fn prod_submit(ring: &RawRing, n: u32) {
    // SAFETY: `producer` points into the ring mapping; only this side writes it.
    let producer = unsafe { AtomicU32::from_ptr(ring.producer) };
    producer.store(
        producer.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Release,
    );
}

fn cons_peek(ring: &mut RawRing, n: u32) -> (u32, u32) {
    let mut avail = ring.cached_prod.wrapping_sub(ring.cached_cons);
    if avail == 0 {
        // SAFETY: `producer` points into the ring mapping, live while the socket is.
        ring.cached_prod = unsafe { AtomicU32::from_ptr(ring.producer).load(Ordering::Acquire) };
        avail = ring.cached_prod.wrapping_sub(ring.cached_cons);
    }
    let n = n.min(avail);
    let idx = ring.cached_cons;
    ring.cached_cons = ring.cached_cons.wrapping_add(n);
    (n, idx)
}

fn cons_release(ring: &RawRing, n: u32) {
    // SAFETY: `consumer` points into the ring mapping; only this side writes it.
    let consumer = unsafe { AtomicU32::from_ptr(ring.consumer) };
    consumer.store(
        consumer.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Release,
    );
}

fn needs_wakeup(ring: &RawRing) -> bool {
    // SAFETY: `flags` points into the ring mapping, live while the socket is.
    let flags = unsafe { AtomicU32::from_ptr(ring.flags).load(Ordering::Relaxed) };
    flags & XDP_RING_NEED_WAKEUP != 0
}

/// Owned C string of an interface or object name (names with NUL are refused by the caller).
pub fn cstring(s: &str) -> Option<CString> {
    CString::new(s).ok()
}
