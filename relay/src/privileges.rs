//! Dropping root after the listeners are bound.

use nix::unistd::{self, Group, User};

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The named user does not exist.
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    /// The named group does not exist.
    #[error("group {0:?} does not exist")]
    NoSuchGroup(String),
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// Its error.
        source: nix::Error,
    },
}

fn sys<T>(call: &'static str, r: nix::Result<T>) -> Result<T, PrivilegeError> {
    r.map_err(|source| PrivilegeError::Sys { call, source })
}

/// Switches to `user` (and `group`, or the user's primary group). Must run before any other
/// thread starts, so every thread ends up with the same credentials.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<(), PrivilegeError> {
    let user = match user {
        Some(name) => Some(
            sys("getpwnam", User::from_name(name))?
                .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_owned()))?,
        ),
        None => None,
    };
    let gid = match group {
        Some(name) => Some(
            sys("getgrnam", Group::from_name(name))?
                .ok_or_else(|| PrivilegeError::NoSuchGroup(name.to_owned()))?
                .gid,
        ),
        None => user.as_ref().map(|u| u.gid),
    };
    if let Some(gid) = gid {
        sys("setgroups", unistd::setgroups(&[gid]))?;
        sys("setgid", unistd::setgid(gid))?;
    }
    if let Some(user) = user {
        sys("setuid", unistd::setuid(user.uid))?;
    }
    Ok(())
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    unistd::geteuid().is_root()
}
