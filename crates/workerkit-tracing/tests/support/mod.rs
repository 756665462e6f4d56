//! A recording `tracing` layer for the tests: every span (name, level, fields as recorded so far,
//! parent) and every event (level, target, fields, the spans it is in), kept in memory and
//! installed for the current thread only.
//!
//! Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Field values as text: strings as they are, everything else in its `Debug` form (which is
/// `Display` for `%value` fields).
pub(crate) type Fields = BTreeMap<String, String>;

/// One recorded span.
#[derive(Clone, Debug)]
pub(crate) struct SpanRecord {
    /// Unique across the recording (the registry reuses ids of closed spans).
    pub(crate) uid: u64,
    pub(crate) name: &'static str,
    pub(crate) target: String,
    pub(crate) level: Level,
    pub(crate) fields: Fields,
    pub(crate) parent: Option<u64>,
    pub(crate) closed: bool,
}

/// One recorded event.
#[derive(Clone, Debug)]
pub(crate) struct EventRecord {
    pub(crate) level: Level,
    pub(crate) target: String,
    pub(crate) fields: Fields,
    /// The spans the event is in, outermost first (uids).
    pub(crate) scope: Vec<u64>,
}

impl EventRecord {
    /// The `message` field.
    pub(crate) fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }

    /// A field's text, if the event has it.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The innermost span the event is in.
    pub(crate) fn parent(&self) -> Option<u64> {
        self.scope.last().copied()
    }
}

#[derive(Debug, Default)]
struct Log {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

/// What the layer recorded. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recording {
    log: Arc<Mutex<Log>>,
}

impl Recording {
    pub(crate) fn events(&self) -> Vec<EventRecord> {
        self.log.lock().unwrap().events.clone()
    }

    pub(crate) fn spans(&self) -> Vec<SpanRecord> {
        self.log.lock().unwrap().spans.clone()
    }

    /// The events with this message, in order.
    pub(crate) fn with_message(&self, message: &str) -> Vec<EventRecord> {
        self.events()
            .into_iter()
            .filter(|e| e.message() == message)
            .collect()
    }

    /// The only event with this message (panics on none or several).
    pub(crate) fn one(&self, message: &str) -> EventRecord {
        let mut found = self.with_message(message);
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {message:?} event, got {found:#?}"
        );
        found.remove(0)
    }

    /// The spans with this name, in creation order.
    pub(crate) fn spans_named(&self, name: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// The only span with this name.
    pub(crate) fn span(&self, name: &str) -> SpanRecord {
        let mut found = self.spans_named(name);
        assert_eq!(found.len(), 1, "expected one {name:?} span, got {found:#?}");
        found.remove(0)
    }

    /// A span by uid.
    pub(crate) fn span_by_uid(&self, uid: u64) -> SpanRecord {
        self.spans()
            .into_iter()
            .find(|s| s.uid == uid)
            .expect("recorded span")
    }

    /// Every recorded field value of every event and span, for "never logged" checks.
    pub(crate) fn all_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let mut text = String::new();
        for fields in log
            .events
            .iter()
            .map(|e| &e.fields)
            .chain(log.spans.iter().map(|s| &s.fields))
        {
            for (key, value) in fields {
                text.push_str(key);
                text.push('=');
                text.push_str(value);
                text.push('\n');
            }
        }
        text
    }

    pub(crate) fn clear(&self) {
        let mut log = self.log.lock().unwrap();
        log.events.clear();
        log.spans.clear();
    }
}

/// The uid a span gets, kept in its extensions.
#[derive(Clone, Copy, Debug)]
struct Uid(u64);

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// The layer that records into a [`Recording`].
#[derive(Debug)]
struct Recorder {
    recording: Recording,
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a new span is in the registry");
        let uid = NEXT_UID.fetch_add(1, Ordering::Relaxed);
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Uid>().map(|u| u.0));
        span.extensions_mut().insert(Uid(uid));
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let metadata = attrs.metadata();
        self.recording.log.lock().unwrap().spans.push(SpanRecord {
            uid,
            name: metadata.name(),
            target: metadata.target().to_owned(),
            level: *metadata.level(),
            fields,
            parent,
            closed: false,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(uid) = uid_of(&ctx, id) else { return };
        let mut log = self.recording.log.lock().unwrap();
        if let Some(span) = log.spans.iter_mut().find(|s| s.uid == uid) {
            values.record(&mut Visitor(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .filter_map(|span| span.extensions().get::<Uid>().map(|u| u.0))
                    .collect()
            })
            .unwrap_or_default();
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let metadata = event.metadata();
        self.recording.log.lock().unwrap().events.push(EventRecord {
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            fields,
            scope,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(uid) = uid_of(&ctx, &id) else { return };
        let mut log = self.recording.log.lock().unwrap();
        if let Some(span) = log.spans.iter_mut().find(|s| s.uid == uid) {
            span.closed = true;
        }
    }
}

fn uid_of<S>(ctx: &Context<'_, S>, id: &Id) -> Option<u64>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ctx.span(id)?.extensions().get::<Uid>().map(|u| u.0)
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Installs a recording subscriber (every level) for the current thread until the guard drops.
pub(crate) fn record() -> (Recording, DefaultGuard) {
    record_at(LevelFilter::TRACE)
}

/// Installs a recording subscriber that records up to `max` for the current thread.
pub(crate) fn record_at(max: LevelFilter) -> (Recording, DefaultGuard) {
    record_filtered(max)
}

/// Installs a recording subscriber that records what `filter` lets through.
pub(crate) fn record_filtered(
    filter: impl Filter<Registry> + Send + Sync + 'static,
) -> (Recording, DefaultGuard) {
    let recording = Recording::default();
    let subscriber = tracing_subscriber::registry().with(
        Recorder {
            recording: recording.clone(),
        }
        .with_filter(filter),
    );
    let guard = tracing::subscriber::set_default(subscriber);
    (recording, guard)
}

/// Silences the default panic message for panics whose payload starts with "expected panic";
/// every other panic still prints.
pub(crate) fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload
                .downcast_ref::<&str>()
                .map(|s| s.starts_with("expected panic"))
                .or_else(|| {
                    payload
                        .downcast_ref::<String>()
                        .map(|s| s.starts_with("expected panic"))
                })
                .unwrap_or(false);
            if !expected {
                default(info);
            }
        }));
    });
}
