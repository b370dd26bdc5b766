//! The XDP program of one interface and its XSKMAP: loaded, attached and
//! detached here. One per interface, shared (`Arc`) by the sockets of all
//! its queues; it stays attached while any of them lives and is detached
//! when the last reference goes.
//!
//! Nothing is pinned: a process that dies without running `Drop` (kill -9)
//! leaves the program attached to the interface, redirecting replication
//! datagrams to sockets that are gone. [`XdpProgram::attach`] therefore
//! looks for a program with its own name in both generic and native mode
//! first, detaches it and logs that; a program of any other name is left
//! alone and reported ([`XdpError::ProgramPresent`]). One ferrolog process
//! per interface and network namespace is assumed.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use crate::bpf;
use crate::error::XdpError;
use crate::sys;

/// The name the program is loaded under, by which a leftover of a crashed process is known.
pub const PROGRAM_NAME: &str = "ferrolog_xsk";
const LICENSE: &str = "Apache-2.0";
const MODES: [(u32, &str); 2] = [
    (sys::XDP_FLAGS_SKB_MODE, "generic"),
    (sys::XDP_FLAGS_DRV_MODE, "native"),
];

/// Where the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Generic (SKB) mode: any interface, after the kernel built an skb; copy mode only.
    Generic,
    /// Native (driver) mode: in the driver's receive path; the only mode with zero-copy.
    Native,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Generic => sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProgramConfig {
    /// The interface, in the calling thread's network namespace.
    pub ifname: String,
    /// UDP destination port redirected to the sockets.
    pub port: u16,
    pub mode: AttachMode,
    /// Slots of the XSKMAP: sockets may bind to queues below this.
    pub queues_max: u32,
    /// The program's name (at most 15 bytes); the default, [`PROGRAM_NAME`], is what a restart
    /// recognises as its own leftover.
    pub name: String,
}

impl ProgramConfig {
    pub fn new(ifname: &str, port: u16, mode: AttachMode) -> Self {
        ProgramConfig {
            ifname: ifname.to_owned(),
            port,
            mode,
            queues_max: 64,
            name: PROGRAM_NAME.to_owned(),
        }
    }
}

/// The attached program and its XSKMAP.
pub struct XdpProgram {
    ifname: String,
    ifindex: u32,
    port: u16,
    mode: AttachMode,
    queues_max: u32,
    prog_id: u32,
    prog: OwnedFd,
    map: OwnedFd,
    /// The network namespace it was attached in: detach must happen there.
    netns: std::fs::File,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("ifname", &self.ifname)
            .field("port", &self.port)
            .field("mode", &self.mode)
            .field("prog_id", &self.prog_id)
            .finish()
    }
}

impl XdpProgram {
    /// Loads the program for `config.port`, clears a leftover of a crashed ferrolog from the
    /// interface, and attaches it in `config.mode`.
    pub fn attach(config: &ProgramConfig) -> Result<Arc<XdpProgram>, XdpError> {
        let ifname_c = sys::cstring(&config.ifname)
            .ok_or_else(|| XdpError::Config(format!("interface name {:?}", config.ifname)))?;
        let name_c = match sys::cstring(&config.name) {
            Some(n) if !config.name.is_empty() && config.name.len() < 16 => n,
            _ => {
                return Err(XdpError::Config(format!(
                    "program name {:?}: 1 to 15 bytes",
                    config.name
                )))
            }
        };
        if config.queues_max == 0 {
            return Err(XdpError::Config("queues_max must be at least 1".into()));
        }
        let ifindex = sys::ifindex(&ifname_c).ok_or_else(|| XdpError::NoSuchInterface {
            name: config.ifname.clone(),
        })?;
        let netns = sys::current_netns().map_err(|e| io_error("open /proc/thread-self/ns/net", &e))?;

        let map_name = CString::new("ferrolog_xsks").expect("no NUL");
        let map = sys::xskmap_create(&map_name, config.queues_max)
            .map_err(|errno| XdpError::from_call("bpf_map_create(XSKMAP)", errno))?;
        let insns = bpf::xsk_redirect_program(config.port, map.as_raw_fd());
        let license = CString::new(LICENSE).expect("no NUL");
        let prog = sys::xdp_prog_load(&name_c, &license, &insns).map_err(|(errno, log)| match errno {
            libc::EPERM | libc::EACCES => XdpError::NoPermission {
                what: "bpf_prog_load",
                errno,
            },
            _ => XdpError::Verifier { errno, log },
        })?;
        let (prog_id, _) =
            sys::prog_info(prog.as_fd()).map_err(|e| XdpError::from_call("bpf_obj_get_info_by_fd", e))?;

        clear_leftover(&config.ifname, ifindex, &config.name)?;

        let flags = config.mode.flags() | sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
        sys::xdp_attach(ifindex, prog.as_fd(), flags).map_err(|errno| match errno {
            libc::EPERM | libc::EACCES => XdpError::NoPermission {
                what: "bpf_xdp_attach",
                errno,
            },
            libc::ENODEV => XdpError::NoSuchInterface {
                name: config.ifname.clone(),
            },
            libc::EBUSY | libc::EEXIST => {
                let (id, name) = attached_program(ifindex).unwrap_or((0, String::new()));
                XdpError::ProgramPresent {
                    ifname: config.ifname.clone(),
                    name,
                    id,
                }
            }
            _ => XdpError::DriverRefused {
                ifname: config.ifname.clone(),
                what: "XDP attach",
                errno,
            },
        })?;
        tracing::info!(
            ifname = %config.ifname, port = config.port, mode = ?config.mode, prog_id,
            "XDP program attached"
        );
        Ok(Arc::new(XdpProgram {
            ifname: config.ifname.clone(),
            ifindex,
            port: config.port,
            mode: config.mode,
            queues_max: config.queues_max,
            prog_id,
            prog,
            map,
            netns,
        }))
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The kernel's id of the loaded program.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    pub(crate) fn queues_max(&self) -> u32 {
        self.queues_max
    }

    /// The inode of the network namespace the program was attached in.
    pub(crate) fn netns_ino(&self) -> Option<u64> {
        self.netns.metadata().ok().map(|m| m.ino())
    }

    /// Directs datagrams of `queue` to the socket `fd`.
    pub(crate) fn insert(&self, queue: u32, fd: i32) -> Result<(), XdpError> {
        let fd = u32::try_from(fd).map_err(|_| XdpError::Library {
            call: "xsk_socket__fd",
            errno: libc::EBADF,
        })?;
        sys::map_update_u32(self.map.as_fd(), queue, fd)
            .map_err(|errno| XdpError::from_call("bpf_map_update_elem(XSKMAP)", errno))
    }

    pub(crate) fn remove(&self, queue: u32) {
        if let Err(errno) = sys::map_delete_u32(self.map.as_fd(), queue) {
            tracing::warn!(ifname = %self.ifname, queue, errno, "could not remove the socket from the XSKMAP");
        }
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        // Detach in the namespace the program was attached in: the ifindex means nothing
        // elsewhere. Threads that hold sockets stay in that namespace anyway; this covers a
        // last reference dropped on some other thread.
        let here = sys::current_netns().ok();
        let same = here.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino()) == self.netns_ino();
        if !same {
            if let Err(e) = sys::set_netns(&self.netns) {
                tracing::warn!(ifname = %self.ifname, error = %e, "cannot enter the program's namespace to detach it");
                return;
            }
        }
        match sys::xdp_detach(self.ifindex, self.mode.flags(), Some(self.prog.as_fd())) {
            Ok(()) => tracing::info!(ifname = %self.ifname, prog_id = self.prog_id, "XDP program detached"),
            Err(errno) => {
                tracing::warn!(ifname = %self.ifname, prog_id = self.prog_id, errno, "XDP detach failed")
            }
        }
        if let (false, Some(here)) = (same, here) {
            if let Err(e) = sys::set_netns(&here) {
                tracing::warn!(error = %e, "cannot return to the thread's network namespace after detach");
            }
        }
    }
}

/// The program attached to the interface in either mode, if any: (id, name).
fn attached_program(ifindex: u32) -> Option<(u32, String)> {
    MODES.iter().find_map(|&(flags, _)| {
        let id = sys::xdp_query_id(ifindex, flags).ok().filter(|&id| id != 0)?;
        Some((id, sys::prog_name(id).unwrap_or_default()))
    })
}

/// Detaches programs named `name` (left by a process that died without detaching) in both
/// modes; refuses to touch a program of any other name.
fn clear_leftover(ifname: &str, ifindex: u32, name: &str) -> Result<(), XdpError> {
    for (flags, mode) in MODES {
        let id = sys::xdp_query_id(ifindex, flags).map_err(|e| XdpError::from_call("bpf_xdp_query_id", e))?;
        if id == 0 {
            continue;
        }
        let found = sys::prog_name(id).map_err(|e| XdpError::from_call("bpf_prog_get_fd_by_id", e))?;
        if found != name {
            return Err(XdpError::ProgramPresent {
                ifname: ifname.to_owned(),
                name: found,
                id,
            });
        }
        sys::xdp_detach(ifindex, flags, None).map_err(|e| XdpError::from_call("bpf_xdp_detach", e))?;
        tracing::warn!(
            ifname, mode, prog_id = id,
            "detached an XDP program {name:?} left attached by an earlier process (it ended without detaching)"
        );
    }
    Ok(())
}

fn io_error(call: &'static str, e: &std::io::Error) -> XdpError {
    XdpError::from_call(call, e.raw_os_error().unwrap_or(libc::EIO))
}
