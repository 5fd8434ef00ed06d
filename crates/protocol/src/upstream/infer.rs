//! The event type of a bare resource object whose subscription did not say it
//! (docs/protocol.md §11): read from the object where VoIPBIN's managers publish it so that
//! the object proves it, and nowhere else.
//!
//! The table, from VoIPBIN's managers (`bin-*-manager`, their `event.go` and the code that
//! publishes each event):
//!
//! | resource | the object shows | event type |
//! |---|---|---|
//! | `call`, `queuecall`, `message`, `activeflow`, `campaigncall`, `groupcall`, `recording` | a `tm_delete` time | `<resource>_deleted` |
//! | `call` | no `tm_update` (only a new call has none) | `call_created` |
//! | `call` | status `ringing` and `tm_ringing` = `tm_update` | `call_ringing` |
//! | `call` | status `progressing` and `tm_progressing` = `tm_update` | `call_progressing` |
//! | `call` | status `hangup` and `tm_hangup` = `tm_update` | `call_hangup` |
//! | `queuecall` | status `initiating`, `waiting`, `connecting`, `service`, `done`, `abandoned` | `queuecall_created`, `_waiting`, `_connecting`, `_serviced`, `_done`, `_abandoned` |
//! | `recording` | status `recording`, `ended` | `recording_started`, `recording_finished` |
//! | `groupcall` | status `hangup` | `groupcall_hangup` |
//! | `campaigncall` | status `dialing` | `campaigncall_created` |
//!
//! Anything else is not inferred: VoIPBIN publishes `call_updated` with every status, so a
//! call's status alone (`terminating`, say) does not tell `call_terminating` from it, and
//! `message`, `activeflow`, `conference` and `agent` objects do not tell their events apart.

/// The fields of a resource object that tell which event it was published for, as strings
/// (absent, `null` or not a string: `None`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifecycle<'a> {
    /// `status`.
    pub status: Option<&'a str>,
    /// `tm_update`.
    pub tm_update: Option<&'a str>,
    /// `tm_delete`.
    pub tm_delete: Option<&'a str>,
    /// `tm_ringing`.
    pub tm_ringing: Option<&'a str>,
    /// `tm_progressing`.
    pub tm_progressing: Option<&'a str>,
    /// `tm_hangup`.
    pub tm_hangup: Option<&'a str>,
}

/// Resources whose `<resource>_deleted` event is the one that sets `tm_delete`.
const DELETED_BY_TM_DELETE: &[(&str, &str)] = &[
    ("call", "call_deleted"),
    ("queuecall", "queuecall_deleted"),
    ("message", "message_deleted"),
    ("activeflow", "activeflow_deleted"),
    ("campaigncall", "campaigncall_deleted"),
    ("groupcall", "groupcall_deleted"),
    ("recording", "recording_deleted"),
];

/// (resource, status) pairs that only one event publishes.
const BY_STATUS: &[(&str, &str, &str)] = &[
    ("queuecall", "initiating", "queuecall_created"),
    ("queuecall", "waiting", "queuecall_waiting"),
    ("queuecall", "connecting", "queuecall_connecting"),
    ("queuecall", "service", "queuecall_serviced"),
    ("queuecall", "done", "queuecall_done"),
    ("queuecall", "abandoned", "queuecall_abandoned"),
    ("recording", "recording", "recording_started"),
    ("recording", "ended", "recording_finished"),
    ("groupcall", "hangup", "groupcall_hangup"),
    ("campaigncall", "dialing", "campaigncall_created"),
];

/// Reads one of a call's time fields.
type Stamp = for<'a> fn(&Lifecycle<'a>) -> Option<&'a str>;

/// A call's statuses whose event stamps its own time as the update time: (status, the time
/// field, the event).
const CALL_STAMPED: &[(&str, Stamp, &str)] = &[
    ("ringing", |o| o.tm_ringing, "call_ringing"),
    ("progressing", |o| o.tm_progressing, "call_progressing"),
    ("hangup", |o| o.tm_hangup, "call_hangup"),
];

/// The event type that `object`, a `resource`, proves it was published for, if the table
/// of the module docs has one.
pub(crate) fn event_type(resource: &str, object: &Lifecycle<'_>) -> Option<&'static str> {
    if object.tm_delete.is_some()
        && let Some((_, deleted)) = DELETED_BY_TM_DELETE.iter().find(|(r, _)| *r == resource)
    {
        return Some(deleted);
    }
    if resource == "call" {
        let Some(updated_at) = object.tm_update else {
            return Some("call_created");
        };
        return CALL_STAMPED
            .iter()
            .find(|(status, stamp, _)| {
                object.status == Some(status) && stamp(object) == Some(updated_at)
            })
            .map(|(_, _, event)| *event);
    }
    let status = object.status?;
    BY_STATUS
        .iter()
        .find(|(r, s, _)| *r == resource && *s == status)
        .map(|(_, _, event)| *event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-01-20T10:30:00.000000Z";
    const T2: &str = "2026-01-20T10:30:05.000000Z";

    fn check(resource: &str, object: Lifecycle<'_>, expected: Option<&str>) {
        assert_eq!(
            event_type(resource, &object),
            expected,
            "{resource} {object:?}"
        );
    }

    #[test]
    fn calls_are_read_from_their_status_and_its_time() {
        let call = |status, stamp: fn(&mut Lifecycle<'static>)| {
            let mut object = Lifecycle {
                status: Some(status),
                tm_update: Some(T2),
                ..Lifecycle::default()
            };
            stamp(&mut object);
            object
        };
        check(
            "call",
            call("ringing", |o| o.tm_ringing = Some(T2)),
            Some("call_ringing"),
        );
        check(
            "call",
            call("progressing", |o| o.tm_progressing = Some(T2)),
            Some("call_progressing"),
        );
        check(
            "call",
            call("hangup", |o| o.tm_hangup = Some(T2)),
            Some("call_hangup"),
        );
        // Updated since it rang (call_updated): not told apart from other updates.
        check("call", call("ringing", |o| o.tm_ringing = Some(T1)), None);
        check("call", call("hangup", |o| o.tm_hangup = Some(T1)), None);
        // VoIPBIN publishes call_updated with every status.
        check("call", call("terminating", |_| {}), None);
        // A new call has no update time; a deleted one a deletion time.
        check(
            "call",
            Lifecycle {
                status: Some("ringing"),
                ..Lifecycle::default()
            },
            Some("call_created"),
        );
        check(
            "call",
            call("hangup", |o| o.tm_delete = Some(T2)),
            Some("call_deleted"),
        );
    }

    #[test]
    fn statuses_that_one_event_publishes() {
        let status = |s| Lifecycle {
            status: Some(s),
            ..Lifecycle::default()
        };
        check("queuecall", status("initiating"), Some("queuecall_created"));
        check("queuecall", status("service"), Some("queuecall_serviced"));
        check("queuecall", status("kicking"), None);
        check("recording", status("ended"), Some("recording_finished"));
        check("groupcall", status("hangup"), Some("groupcall_hangup"));
        check("groupcall", status("progressing"), None);
        check(
            "campaigncall",
            status("dialing"),
            Some("campaigncall_created"),
        );
        check(
            "queuecall",
            Lifecycle {
                status: Some("done"),
                tm_delete: Some(T1),
                ..Lifecycle::default()
            },
            Some("queuecall_deleted"),
        );
        // Resources whose objects do not tell their events apart.
        check("activeflow", status("running"), None);
        check("conference", status("terminating"), None);
        check("agent", status("available"), None);
        check("message", Lifecycle::default(), None);
        check("unheard_of", status("done"), None);
    }
}
