//! systemd's D-Bus API, as the systemd cgroup driver needs it: pod cgroups are slices that
//! systemd owns. bosun starts a pod's slice as a transient unit before the sandbox (with the
//! pod-wide limits as unit properties, which systemd writes into the cgroup files), the
//! runtime puts the containers' scopes into it, and bosun stops the slice once the pod is gone.
//! kubelet does the same through runc's systemd manager.

use std::time::Duration;

use tokio::sync::OnceCell;
use zbus::zvariant::{OwnedObjectPath, Value};

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long one call may take: systemd answers at once, but a wedged bus must not hold a pod
/// worker forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An error talking to systemd about a unit.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cgroupDriver: systemd: cannot reach systemd on the system bus: {0} (is systemd PID 1 and dbus running?)")]
    Connect(String),
    #[error("systemd {method} {unit}: {message}")]
    Call {
        method: &'static str,
        unit: String,
        message: String,
    },
}

/// A connection to systemd's manager on the system bus.
#[derive(Debug)]
pub struct Systemd {
    manager: zbus::Proxy<'static>,
}

static SYSTEMD: OnceCell<Systemd> = OnceCell::const_new();

/// The process's connection to systemd, made on first use and kept; a failed attempt is
/// tried again at the next call.
pub async fn systemd() -> Result<&'static Systemd, SystemdError> {
    SYSTEMD.get_or_try_init(Systemd::connect).await
}

/// A pod slice's unit properties that come from kubelet's pod limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceLimits {
    /// `TasksMax`: `None` leaves systemd's default, `Some(None)` is `infinity`.
    pub tasks_max: Option<Option<u64>>,
}

impl Systemd {
    async fn connect() -> Result<Systemd, SystemdError> {
        let connect = async {
            let connection = zbus::Connection::system().await?;
            zbus::Proxy::new_owned(connection, DESTINATION, PATH, MANAGER).await
        };
        let manager = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| SystemdError::Connect(format!("no answer in {CALL_TIMEOUT:?}")))?
            .map_err(|e| SystemdError::Connect(e.to_string()))?;
        // A manager that answers a property read is there; a bus without systemd fails here.
        tokio::time::timeout(CALL_TIMEOUT, manager.get_property::<String>("Version"))
            .await
            .map_err(|_| SystemdError::Connect(format!("no answer in {CALL_TIMEOUT:?}")))?
            .map_err(|e| SystemdError::Connect(e.to_string()))?;
        Ok(Systemd { manager })
    }

    /// Starts slice `unit` (e.g. `kubepods-besteffort-pod<uid>.slice`) below slice `parent`
    /// with `limits`, as runc's systemd manager starts a slice: a transient unit wanted by its
    /// parent, without default dependencies, with accounting on. A slice that already exists
    /// (bosun restarted, or the sandbox is re-created) gets the limits set instead.
    pub async fn start_slice(
        &self,
        unit: &str,
        parent: &str,
        limits: SliceLimits,
    ) -> Result<(), SystemdError> {
        let mut properties: Vec<(&str, Value<'_>)> = vec![
            (
                "Description",
                Value::from(format!("bosun pod slice {unit}")),
            ),
            ("Wants", Value::from(vec![parent.to_owned()])),
            ("DefaultDependencies", Value::from(false)),
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
        ];
        let limit_properties = limit_properties(limits);
        properties.extend(limit_properties.iter().cloned());
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let started = self
            .call::<OwnedObjectPath, _>(
                "StartTransientUnit",
                unit,
                &(unit, "replace", properties, aux),
            )
            .await;
        match started {
            Ok(_) => Ok(()),
            Err(CallError::Named(name, _)) if name == "org.freedesktop.systemd1.UnitExists" => {
                if limit_properties.is_empty() {
                    return Ok(());
                }
                self.call::<(), _>("SetUnitProperties", unit, &(unit, true, limit_properties))
                    .await
                    .map_err(|e| e.into_error("SetUnitProperties", unit))
            }
            Err(e) => Err(e.into_error("StartTransientUnit", unit)),
        }
    }

    /// Stops slice `unit` and everything left in it; a unit systemd does not know is gone
    /// already.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        match self
            .call::<OwnedObjectPath, _>("StopUnit", unit, &(unit, "replace"))
            .await
        {
            Ok(_) => Ok(()),
            Err(CallError::Named(name, _)) if name == "org.freedesktop.systemd1.NoSuchUnit" => {
                Ok(())
            }
            Err(e) => Err(e.into_error("StopUnit", unit)),
        }
    }

    async fn call<R, B>(&self, method: &'static str, unit: &str, body: &B) -> Result<R, CallError>
    where
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = self.manager.call::<_, B, R>(method, body);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(CallError::Other(format!(
                "{method} {unit}: no answer in {CALL_TIMEOUT:?}"
            ))),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(zbus::Error::MethodError(name, message, _))) => Err(CallError::Named(
                name.to_string(),
                message.unwrap_or_default(),
            )),
            Ok(Err(e)) => Err(CallError::Other(e.to_string())),
        }
    }
}

/// A call's failure: a D-Bus error with its name, or anything else.
enum CallError {
    Named(String, String),
    Other(String),
}

impl CallError {
    fn into_error(self, method: &'static str, unit: &str) -> SystemdError {
        let message = match self {
            CallError::Named(name, message) => format!("{name}: {message}"),
            CallError::Other(message) => message,
        };
        SystemdError::Call {
            method,
            unit: unit.to_owned(),
            message,
        }
    }
}

fn limit_properties(limits: SliceLimits) -> Vec<(&'static str, Value<'static>)> {
    let mut properties = Vec::new();
    if let Some(tasks_max) = limits.tasks_max {
        properties.push(("TasksMax", Value::from(tasks_max.unwrap_or(u64::MAX))));
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_pids_limit_is_infinity_and_none_sets_nothing() {
        assert!(limit_properties(SliceLimits::default()).is_empty());
        let infinite = limit_properties(SliceLimits {
            tasks_max: Some(None),
        });
        assert_eq!(infinite, vec![("TasksMax", Value::from(u64::MAX))]);
        let bounded = limit_properties(SliceLimits {
            tasks_max: Some(Some(64)),
        });
        assert_eq!(bounded, vec![("TasksMax", Value::from(64u64))]);
    }
}
