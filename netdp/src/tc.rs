//! Attaching a tc program (a `SchedClassifier`) to one direction of an interface, pinned in
//! bpffs so that it outlives the daemon, and taking it off again however it was attached.
//!
//! The kernel offers two ways, and [`TcMode`] says which one a caller uses:
//! - **tcx** (kernel 6.6 and later): a BPF link, pinned at the caller's path. The link keeps
//!   the program attached while no daemon runs; unpinning it detaches the program.
//! - **clsact** (every kernel): a `cls_bpf` filter under the clsact qdisc, in direct-action
//!   mode, at the caller's own priority and a fixed handle. A filter is no link and cannot be
//!   pinned, so the *program* is pinned at the same path instead: the pin records in bpffs
//!   that the program runs there, so that [`attached`] lists it and [`detach`] knows which
//!   filter to remove. The filter itself stays until removed or until the interface goes.
//!
//! Either way a new attachment is pinned at `<pin>_new` first and then renamed over the pin,
//! and attaching again replaces the earlier attachment without a gap. [`detach`] looks at
//! what a pin holds, not at the mode, so an attachment made in the other mode (the kernel
//! changed between runs, or [`TC_ATTACH_VARIABLE`]) is removed all the same, and attaching
//! in one mode takes off what the other left.
//!
//! Pins are named `<dir>/<ifindex><suffix>`, the suffix being the hook's. Each kind of
//! program has its own clsact priority, so that two never replace each other on one
//! interface (a lower one runs first); the constants below list those in use.
//! bosun's programs return `TC_ACT_UNSPEC` for a packet they let through, so the filters
//! after theirs still see it.

use std::{
    ffi::{CString, OsStr},
    fmt, fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::{
    programs::{
        links::{FdLink, LinkOrder},
        tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
        ProgramError, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};

use crate::{
    netlink::{interface_name, request, OWN_NETNS},
    service::bpf::{pin_over, remove_pin, NEW_LINK_SUFFIX},
    Error,
};

/// The clsact priority of the NetworkPolicy programs on pods' interfaces.
pub(crate) const POLICY_PRIORITY: u16 = 1;
/// The clsact priority of the programs for traffic from outside, on the node's external
/// interfaces.
pub(crate) const NODEPORT_PRIORITY: u16 = 2;

/// The loaded object's classifier `name`.
pub(crate) fn classifier<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::ProgramMissing { program: name })?
        .try_into()
        .map_err(|source| Error::LoadProgram {
            program: name,
            source: Box::new(source),
        })
}

/// The subdirectory of a tc datapath's directory that holds its pins.
pub(crate) const LINKS_DIR: &str = "links";

/// Creates the `links` subdirectory of a tc datapath's directory `dir`.
pub(crate) fn create_links_dir(dir: &Path) -> Result<(), Error> {
    let links = dir.join(LINKS_DIR);
    fs::create_dir_all(&links).map_err(|source| bpffs_error("mkdir", &links, source))
}

/// Removes a tc datapath's directory `dir`: takes `hooks` off every interface its `links`
/// pin them on (tcx links and clsact filters alike), then removes the pins of `maps` and the
/// directory. `Ok(false)` if there was no such directory. The clsact qdiscs stay: other
/// programs may use them, and an empty one changes nothing. Takes filters off the interfaces
/// of the calling thread's network namespace.
pub(crate) fn remove_datapath_dir(
    dir: &Path,
    hooks: &[TcHook],
    maps: impl IntoIterator<Item = &'static str>,
) -> Result<bool, Error> {
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(bpffs_error("stat", dir, source)),
    }
    let links = dir.join(LINKS_DIR);
    detach_all(&links, hooks)?;
    remove_dir(&links)?;
    for map in maps {
        remove_pin(&dir.join(map))?;
    }
    remove_dir(dir)?;
    Ok(true)
}

fn remove_dir(path: &Path) -> Result<(), Error> {
    match fs::remove_dir(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(bpffs_error("rmdir", path, error))
        }
        _ => Ok(()),
    }
}

fn bpffs_error(call: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Bpffs {
        call,
        path: path.to_owned(),
        source,
    }
}

/// The name of interface `ifindex` of the calling thread's network namespace.
pub(crate) fn interface_name_of(ifindex: u32) -> Result<String, Error> {
    interface_name(ifindex).ok_or(Error::InterfaceIndexNotFound { ifindex })
}

/// The environment variable that forces a [`TcMode`]: `tcx` or `clsact`.
pub const TC_ATTACH_VARIABLE: &str = "BOSUN_TC_ATTACH";

/// How tc programs are attached; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// tcx links (kernel 6.6 and later).
    Tcx,
    /// clsact filters, with the program pinned.
    Clsact,
}

/// Which interfaces a datapath attaches to: the default [`TcMode`] differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Pods' interfaces: one attachment per pod, made while the pod starts, so its cost is
    /// on the pod start path. Default clsact on every kernel: a tcx link's attach waits out
    /// an RCU grace period under RTNL (8–27 ms each here, on 6.18), a `cls_bpf` filter's
    /// takes a fraction of a millisecond.
    Pods,
    /// The node's own interfaces, attached once at start, which other tools may use too:
    /// default tcx where the kernel has it (a link has an owner, and attachments of other
    /// owners keep their places), clsact before 6.6.
    Node,
}

impl TcMode {
    /// [`TC_ATTACH_VARIABLE`] if set (and not empty), else the default for `interfaces`
    /// (see [`Interfaces`]). An unknown value is an error naming the variable and the value.
    pub fn detect(interfaces: Interfaces) -> Result<Self, Error> {
        Self::choose(
            std::env::var_os(TC_ATTACH_VARIABLE).as_deref(),
            interfaces,
            kernel_has_tcx,
        )
    }

    fn choose(
        forced: Option<&OsStr>,
        interfaces: Interfaces,
        has_tcx: impl FnOnce() -> bool,
    ) -> Result<Self, Error> {
        match forced.filter(|value| !value.is_empty()) {
            None if interfaces == Interfaces::Node && has_tcx() => Ok(Self::Tcx),
            None => Ok(Self::Clsact),
            Some(value) if value == "tcx" => Ok(Self::Tcx),
            Some(value) if value == "clsact" => Ok(Self::Clsact),
            Some(value) => Err(Error::TcAttachMode {
                variable: TC_ATTACH_VARIABLE,
                value: value.to_string_lossy().into_owned(),
            }),
        }
    }

    /// `tcx` or `clsact`, as [`TC_ATTACH_VARIABLE`] spells them.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

impl fmt::Display for TcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the kernel has tcx (6.6 and later), the test aya itself makes.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

/// One program's place on an interface.
#[derive(Clone, Copy, Debug)]
pub struct TcHook {
    /// The program's name in the object, which is also its clsact filter's name.
    pub program: &'static str,
    pub attach_type: TcAttachType,
    /// What follows the ifindex in its pins' names (`_in` for `12_in`).
    pub pin_suffix: &'static str,
    /// Its clsact filter's priority: each kind of program has its own (see the module
    /// documentation).
    pub priority: u16,
}

/// The handle of every clsact filter: with the priority fixed too, attaching again replaces
/// the filter in place (atomically, in the kernel) instead of adding another.
const CLSACT_HANDLE: u32 = 1;

/// How long [`detach`] waits for the kernel to take a tcx program off the interface after
/// its link is unpinned: normally it is done when the last reference is closed.
const DETACH_TIMEOUT: Duration = Duration::from_secs(2);
const DETACH_POLL: Duration = Duration::from_millis(2);

impl TcHook {
    /// The pin of this hook's attachment to `ifindex`.
    pub fn pin(&self, dir: &Path, ifindex: u32) -> PathBuf {
        dir.join(format!("{ifindex}{}", self.pin_suffix))
    }

    fn new_pin(&self, dir: &Path, ifindex: u32) -> PathBuf {
        dir.join(format!("{ifindex}{}{NEW_LINK_SUFFIX}", self.pin_suffix))
    }

    /// Attaches `program` (this hook's, loaded) to the interface `ifindex`, named `ifname`,
    /// of the calling thread's network namespace, in `mode`, and pins the attachment in
    /// `dir`, replacing an earlier one (of either mode) without a gap: the new program runs
    /// before the old one stops, so for a moment a packet may pass both.
    ///
    /// The name was just resolved from the index; should the interface be replaced by
    /// another of the same name in between, the new one gets the program.
    pub fn attach(
        &self,
        mode: TcMode,
        program: &mut SchedClassifier,
        ifindex: u32,
        ifname: &str,
        dir: &Path,
    ) -> Result<(), Error> {
        let new = self.new_pin(dir, ifindex);
        // Left by a crash between pin and rename. A link's program goes with it; a clsact
        // filter that runs a program pinned there is replaced below, or removed in tcx mode.
        remove_pin(&new)?;
        match mode {
            TcMode::Tcx => {
                self.attach_tcx(program, ifindex, ifname, new, &self.pin(dir, ifindex))?;
                // What the clsact fallback may have left: the tcx program now runs, so the
                // filter can go. Renaming the link's pin over a program pin unpinned that.
                self.remove_filter(ifindex, None)
            }
            // The filter runs before the program's pin is renamed over a link's pin, which
            // releases the link and so takes its program off.
            TcMode::Clsact => self.attach_clsact(program, ifindex, ifname, new, dir),
        }
    }

    fn attach_error(&self, ifindex: u32, ifname: &str, source: ProgramError) -> Error {
        Error::AttachTc {
            program: self.program,
            ifindex,
            ifname: ifname.to_owned(),
            source: Box::new(source),
        }
    }

    /// Attaches through a tcx link, pinned over the interface's earlier pin. Last: programs
    /// of other owners on the interface run first and see every packet.
    fn attach_tcx(
        &self,
        program: &mut SchedClassifier,
        ifindex: u32,
        ifname: &str,
        new: PathBuf,
        live: &Path,
    ) -> Result<(), Error> {
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        let link_id = program
            .attach_with_options(ifname, self.attach_type, options)
            .map_err(|source| self.attach_error(ifindex, ifname, source))?;
        let link = program
            .take_link(link_id)
            .map_err(|source| self.attach_error(ifindex, ifname, source))?;
        let link = FdLink::try_from(link).map_err(|source| Error::LinkNotPinnable {
            program: self.program,
            source: Box::new(source),
        })?;
        pin_over(link, self.program, new, live)
    }

    /// Pins the program at `new`, attaches it as the clsact filter of this hook's priority
    /// (replacing the filter there), then renames the pin over the live one. Pinning first
    /// leaves nothing unpinned running should the daemon die in between: a filter whose
    /// program is pinned only at `new` is found by [`detach`] all the same.
    fn attach_clsact(
        &self,
        program: &mut SchedClassifier,
        ifindex: u32,
        ifname: &str,
        new: PathBuf,
        dir: &Path,
    ) -> Result<(), Error> {
        add_clsact(ifindex, ifname)?;
        program.pin(&new).map_err(|source| Error::PinProgram {
            program: self.program,
            path: new.clone(),
            source: Box::new(source),
        })?;
        if let Err(error) = self.attach_filter(program, ifindex, ifname) {
            let _ = fs::remove_file(&new);
            return Err(error);
        }
        // On failure the program pinned at `new` keeps running, and `detach` finds it there.
        fs::rename(&new, self.pin(dir, ifindex)).map_err(|source| Error::Bpffs {
            call: "rename",
            path: new,
            source,
        })
    }

    /// Adds the filter, or replaces the one at its priority and handle. aya's handle would
    /// remove the filter when dropped, so it is forgotten: the filter stays until
    /// [`detach`] or until the interface goes.
    fn attach_filter(
        &self,
        program: &mut SchedClassifier,
        ifindex: u32,
        ifname: &str,
    ) -> Result<(), Error> {
        let handle = aya::programs::tc::TcHandle::from(CLSACT_HANDLE);
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: self.priority,
            handle,
            classid: None,
        });
        let link_id = match program.attach_with_options(ifname, self.attach_type, options) {
            Ok(link_id) => link_id,
            // The filter of an earlier attach: replace it.
            Err(ProgramError::TcError(TcError::NetlinkError(error)))
                if error.raw_os_error() == Some(nix::libc::EEXIST) =>
            {
                let existing = SchedClassifierLink::attached(
                    ifname,
                    self.attach_type,
                    self.priority,
                    handle,
                    None,
                )
                .map_err(|_| Error::InterfaceIndexNotFound { ifindex })?;
                program
                    .attach_to_link(existing)
                    .map_err(|source| self.attach_error(ifindex, ifname, source))?
            }
            Err(source) => return Err(self.attach_error(ifindex, ifname, source)),
        };
        let link = program
            .take_link(link_id)
            .map_err(|source| self.attach_error(ifindex, ifname, source))?;
        std::mem::forget(link);
        Ok(())
    }

    /// Removes this hook's clsact filter from `ifindex` if it runs `program_id` or this hook's
    /// program (by name: a daemon may have died between replacing the filter and pinning the
    /// new program). Nothing to do if there is none, or no such interface.
    fn remove_filter(&self, ifindex: u32, program_id: Option<u32>) -> Result<(), Error> {
        let parent = clsact_parent(self.attach_type);
        let mut query = TcMessage::default();
        query.header.index = ifindex as i32;
        query.header.parent = parent;
        let replies = match request(
            RouteNetlinkMessage::GetTrafficFilter(query),
            NLM_F_DUMP,
            "dump tc filters",
            Path::new(OWN_NETNS),
        ) {
            Ok(replies) => replies,
            Err(error) if is_no_device(&error) => return Ok(()),
            Err(error) => return Err(error),
        };
        for reply in replies {
            let RouteNetlinkMessage::NewTrafficFilter(filter) = reply else {
                continue;
            };
            if !self.is_ours(&filter, program_id) {
                continue;
            }
            let mut delete = TcMessage::default();
            delete.header.index = ifindex as i32;
            delete.header.parent = parent;
            delete.header.handle = filter.header.handle;
            delete.header.info = filter.header.info;
            match request(
                RouteNetlinkMessage::DelTrafficFilter(delete),
                NLM_F_ACK,
                "delete tc filter",
                Path::new(OWN_NETNS),
            ) {
                Ok(_) => {}
                // Gone meanwhile, with its interface or by another hand.
                Err(error) if is_no_device(&error) || is_errno(&error, nix::libc::ENOENT) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Whether a filter of the dump is this hook's: its priority, the fixed handle, and the
    /// program either `program_id` or named as this hook's.
    fn is_ours(&self, filter: &TcMessage, program_id: Option<u32>) -> bool {
        // `info` holds the priority above the protocol.
        if (filter.header.info >> 16) as u16 != self.priority
            || u32::from(filter.header.handle) != CLSACT_HANDLE
        {
            return false;
        }
        let mut is_bpf = false;
        let mut runs_ours = false;
        for attribute in &filter.attributes {
            match attribute {
                TcAttribute::Kind(kind) => is_bpf = kind == "bpf",
                TcAttribute::Options(options) => {
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => {
                                runs_ours |= Some(*id) == program_id;
                            }
                            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => {
                                runs_ours |= name == self.program;
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        is_bpf && runs_ours
    }
}

/// The parent handle of a direction's filters (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_*)`).
fn clsact_parent(attach_type: TcAttachType) -> TcHandle {
    const TC_H_MIN_INGRESS: u32 = 0xfff2;
    const TC_H_MIN_EGRESS: u32 = 0xfff3;
    TcHandle::from(match attach_type {
        TcAttachType::Ingress => 0xffff_0000 | TC_H_MIN_INGRESS,
        TcAttachType::Egress => 0xffff_0000 | TC_H_MIN_EGRESS,
        TcAttachType::Custom(parent) => parent,
    })
}

fn is_errno(error: &Error, wanted: i32) -> bool {
    matches!(error, Error::NetlinkRefused { errno, .. } if *errno == wanted)
}

/// A dump of a missing interface is empty; a delete is refused with `ENODEV`.
fn is_no_device(error: &Error) -> bool {
    is_errno(error, nix::libc::ENODEV)
}

fn add_clsact(ifindex: u32, ifname: &str) -> Result<(), Error> {
    match qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(error)) if error.raw_os_error() == Some(nix::libc::EEXIST) => {
            Ok(())
        }
        Err(source) => Err(Error::AddClsact {
            ifindex,
            ifname: ifname.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Takes `hooks`' attachments off the interface `ifindex`, whatever their pins in `dir`
/// hold (the live pins and the `_new` ones a crash leaves): a tcx link is unpinned, and
/// [`detach`] returns once its program no longer runs (at once if the interface is gone); a
/// program pinned by the clsact fallback has its filter removed, then its pin. Not an error
/// if nothing is attached. Looks the interface up in the calling thread's network namespace:
/// call it from the one the interface is in.
pub fn detach(dir: &Path, ifindex: u32, hooks: &[TcHook]) -> Result<(), Error> {
    let mut unpinned_links = Vec::new();
    for hook in hooks {
        for pin in [hook.pin(dir, ifindex), hook.new_pin(dir, ifindex)] {
            match inspect(&pin)? {
                None => {}
                Some(Pinned::Link { program_id }) => {
                    remove_pin(&pin)?;
                    unpinned_links.extend(program_id.map(|id| (hook.attach_type, id)));
                }
                Some(Pinned::Program { program_id }) => {
                    hook.remove_filter(ifindex, program_id)?;
                    remove_pin(&pin)?;
                }
                // Not ours to interpret; it only holds the name.
                Some(Pinned::Other) => remove_pin(&pin)?,
            }
        }
    }
    wait_detached(ifindex, &unpinned_links)
}

/// The ifindexes with a live pin of one of `hooks` in `dir` (a tcx link or a program the
/// clsact fallback pinned), in order.
pub fn attached(dir: &Path, hooks: &[TcHook]) -> Result<Vec<u32>, Error> {
    let mut ifindexes: Vec<u32> = pin_names(dir)?
        .iter()
        .filter_map(|name| pinned_ifindex(name, hooks))
        .collect();
    ifindexes.sort_unstable();
    ifindexes.dedup();
    Ok(ifindexes)
}

/// [`detach`]es `hooks` from every interface with a pin in `dir`, a `_new` one included.
pub fn detach_all(dir: &Path, hooks: &[TcHook]) -> Result<(), Error> {
    let mut ifindexes: Vec<u32> = pin_names(dir)?
        .iter()
        .filter_map(|name| {
            pinned_ifindex(name.strip_suffix(NEW_LINK_SUFFIX).unwrap_or(name), hooks)
        })
        .collect();
    ifindexes.sort_unstable();
    ifindexes.dedup();
    for ifindex in ifindexes {
        detach(dir, ifindex, hooks)?;
    }
    Ok(())
}

/// The names of the pins in `dir`; none if there is no such directory.
pub(crate) fn pin_names(dir: &Path) -> Result<Vec<String>, Error> {
    let readdir_error = |source| Error::Bpffs {
        call: "readdir",
        path: dir.to_owned(),
        source,
    };
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(readdir_error(source)),
    };
    let mut names = Vec::new();
    for entry in listing {
        let entry = entry.map_err(readdir_error)?;
        names.extend(entry.file_name().to_str().map(str::to_owned));
    }
    Ok(names)
}

/// The ifindex a live pin's name holds (`12_in` for a hook with suffix `_in`).
fn pinned_ifindex(name: &str, hooks: &[TcHook]) -> Option<u32> {
    hooks
        .iter()
        .find_map(|hook| ifindex_before(name, hook.pin_suffix))
}

/// The ifindex that `name` holds before `suffix` (`12` in `12_in` with `_in`).
pub(crate) fn ifindex_before(name: &str, suffix: &str) -> Option<u32> {
    let ifindex = name.strip_suffix(suffix)?;
    // `parse` alone would accept a leading '+'.
    if ifindex.is_empty() || !ifindex.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ifindex.parse().ok()
}

/// The id of the program that the pin at `path` stands for: a link's program, or a program
/// pinned itself (the clsact fallback's); `None` if there is no pin, or it holds neither.
pub fn pinned_program_id(path: &Path) -> Result<Option<u32>, Error> {
    Ok(match inspect(path)? {
        Some(Pinned::Link { program_id } | Pinned::Program { program_id }) => program_id,
        Some(Pinned::Other) | None => None,
    })
}

/// What a pin holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pinned {
    /// A link (tcx), and the program it attaches.
    Link { program_id: Option<u32> },
    /// A program, pinned by the clsact fallback.
    Program { program_id: Option<u32> },
    /// Anything else, such as a map.
    Other,
}

/// What the pin at `path` holds; `None` if there is no pin.
fn inspect(path: &Path) -> Result<Option<Pinned>, Error> {
    let fd = match bpf_obj_get(path) {
        Ok(fd) => fd,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Bpffs {
                call: "BPF_OBJ_GET",
                path: path.to_owned(),
                source,
            })
        }
    };
    // The kernel describes a BPF file descriptor there: a link's has `link_type`, a program's
    // `prog_type`, both `prog_id`.
    let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = fs::read_to_string(&fdinfo).map_err(|source| Error::Bpffs {
        call: "read the fdinfo of",
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(parse_fdinfo(&text)))
}

fn parse_fdinfo(text: &str) -> Pinned {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    };
    let program_id = field("prog_id").and_then(|id| id.parse().ok());
    if field("link_type").is_some() {
        Pinned::Link { program_id }
    } else if field("prog_type").is_some() {
        Pinned::Program { program_id }
    } else {
        Pinned::Other
    }
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`), whatever it is. aya opens pins only as
/// the type the caller names, and misreads another's information.
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    /// The part of `union bpf_attr` that `BPF_OBJ_GET` reads; the kernel takes the newer
    /// fields as zero when the size leaves them out.
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: nix::libc::c_long = 7;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed, and the path it points
    // to is NUL-terminated; both outlive the call, which only reads them.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until none of `programs` (direction, program id) runs on the interface. The kernel
/// takes a tcx program off when its link's last reference goes, which unpinning does unless
/// another process holds the link open.
fn wait_detached(ifindex: u32, programs: &[(TcAttachType, u32)]) -> Result<(), Error> {
    if programs.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + DETACH_TIMEOUT;
    loop {
        let Some(ifname) = interface_name(ifindex) else {
            return Ok(());
        };
        let mut running = Vec::new();
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            let wanted: Vec<u32> = programs
                .iter()
                .filter(|(attach_type, _)| *attach_type == direction)
                .map(|(_, id)| *id)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let attached = match SchedClassifier::query_tcx(&ifname, direction) {
                Ok((_revision, attached)) => attached,
                // Deleted between the name lookup and the query.
                Err(_) if interface_name(ifindex).is_none() => return Ok(()),
                Err(source) => {
                    return Err(Error::QueryTc {
                        ifindex,
                        ifname,
                        source: Box::new(source),
                    })
                }
            };
            running.extend(
                attached
                    .iter()
                    .map(|program| program.id())
                    .filter(|id| wanted.contains(id)),
            );
        }
        if running.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::StillAttached {
                ifindex,
                program_ids: running,
            });
        }
        // The kernel offers no notification for a detach; the poll is short and bounded.
        thread::sleep(DETACH_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOKS: [TcHook; 2] = [
        TcHook {
            program: "in",
            attach_type: TcAttachType::Egress,
            pin_suffix: "_in",
            priority: 1,
        },
        TcHook {
            program: "out",
            attach_type: TcAttachType::Ingress,
            pin_suffix: "_out",
            priority: 1,
        },
    ];

    #[test]
    fn the_variable_forces_a_mode_and_the_interfaces_and_kernel_decide_otherwise() {
        let choose = |value: Option<&str>, interfaces: Interfaces, has_tcx: bool| {
            TcMode::choose(value.map(OsStr::new), interfaces, || has_tcx)
                .map_err(|error| error.to_string())
        };
        let pods = |value, has_tcx| choose(value, Interfaces::Pods, has_tcx);
        let node = |value, has_tcx| choose(value, Interfaces::Node, has_tcx);
        assert_eq!(node(None, true), Ok(TcMode::Tcx));
        assert_eq!(node(None, false), Ok(TcMode::Clsact));
        assert_eq!(pods(None, true), Ok(TcMode::Clsact));
        assert_eq!(pods(None, false), Ok(TcMode::Clsact));
        assert_eq!(node(Some(""), false), Ok(TcMode::Clsact));
        assert_eq!(node(Some("clsact"), true), Ok(TcMode::Clsact));
        assert_eq!(node(Some("tcx"), false), Ok(TcMode::Tcx));
        assert_eq!(pods(Some("tcx"), true), Ok(TcMode::Tcx));
        let error = pods(Some("TCX "), true).expect_err("an unknown mode");
        assert!(
            error.contains(TC_ATTACH_VARIABLE) && error.contains("\"TCX \""),
            "{error}"
        );
    }

    #[test]
    fn only_live_pins_name_an_interface() {
        assert_eq!(pinned_ifindex("12_in", &HOOKS), Some(12));
        assert_eq!(pinned_ifindex("7_out", &HOOKS), Some(7));
        for other in [
            "12_in_new",
            "_in",
            "+1_in",
            "x_out",
            "12",
            "BOSUN_EP_V1",
            "12_inx",
        ] {
            assert_eq!(pinned_ifindex(other, &HOOKS), None, "{other:?}");
        }
    }

    #[test]
    fn fdinfo_tells_a_link_from_a_program() {
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t2077\nlink_type:\ttcx\n\
                    link_id:\t31\nprog_tag:\t9e1a2b3c4d5e6f70\nprog_id:\t208\nifindex:\t5\n\
                    attach_type:\t47\n";
        assert_eq!(
            parse_fdinfo(link),
            Pinned::Link {
                program_id: Some(208)
            }
        );
        let program = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2078\nprog_type:\t3\n\
                       prog_jited:\t1\nprog_tag:\t9e1a2b3c4d5e6f70\nmemlock:\t4096\n\
                       prog_id:\t209\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(
            parse_fdinfo(program),
            Pinned::Program {
                program_id: Some(209)
            }
        );
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nkey_size:\t4\nmap_id:\t12\n";
        assert_eq!(parse_fdinfo(map), Pinned::Other);
    }
}
