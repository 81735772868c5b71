//! No panic reaches the user as a Rust panic. sled 0.34 panics on some
//! damaged files (`tried to serialize Uninitialized`, an index out of
//! bounds in its segment accountant) instead of returning an error, and a
//! panic can come from any thread (the writer, the daemon's blocking pool).
//! [`install`] replaces the panic hook: the panic becomes one `error:` line
//! — for a panic in sled or in bbcrawl's store code, the same words as a
//! damaged-store error, naming the store last opened and what to do — and
//! the process exits at once with code 1 (store damage) or
//! [`crate::exit::INTERNAL`] (anything else, a bug). Exiting at once is no
//! worse for the store than `kill -9`, which the crash guarantees cover,
//! and better than a daemon carrying on over a broken sled. With
//! `RUST_BACKTRACE` set (to anything but `0`), the backtrace follows.

use std::panic::PanicHookInfo;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Set by the first panic: it alone is reported.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// The store directory most recently opened (set before sled opens it, so
/// a panic inside sled's recovery names it too).
static STORE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Remembers `path` as the store a panic is about.
pub fn note_store(path: &std::path::Path) {
    if let Ok(mut s) = STORE.lock() {
        *s = Some(path.to_path_buf());
    }
}

/// What to do about a damaged store, said after every damaged-store error.
pub const DAMAGE_ADVICE: &str = "`bbcrawl store check` lists what is damaged and `bbcrawl store repair` keeps what can be read (the next sync fetches the rest) when the store still opens; else move the directory aside (or restore a backup of it) and run `bbcrawl sync` to fetch the history again";

/// Whether a panic at `file` is the store's: sled, bbcrawl's store code, or
/// a decoder it calls.
fn is_store(file: &str) -> bool {
    ["sled", "src/store/", "lz4_flex", "postcard"]
        .iter()
        .any(|p| file.contains(p))
}

/// The panic's message, as text.
fn message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The `error:` line for a panic with `message` at `file:line`, and the exit
/// code.
pub fn describe(
    message: &str,
    file: &str,
    line: u32,
    store: Option<&std::path::Path>,
) -> (String, u8) {
    let at = format!("{message} ({file}:{line})");
    if is_store(file) {
        let which = match store {
            Some(p) => format!("the store at {}", p.display()),
            None => "the store".to_owned(),
        };
        (
            format!("{which} is damaged: sled failed reading it: {at}; {DAMAGE_ADVICE}"),
            crate::exit::RUNTIME,
        )
    } else {
        (
            format!("internal error (a bug in bbcrawl, please report it): {at}"),
            crate::exit::INTERNAL,
        )
    }
}

/// Installs the hook (once, at the start of `main`).
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let (file, line) = info
            .location()
            .map(|l| (l.file().to_owned(), l.line()))
            .unwrap_or_default();
        let store = STORE.lock().ok().and_then(|s| s.clone());
        let (text, code) = describe(&message(info), &file, line, store.as_deref());
        // One report, whichever thread panics first; the others wait
        // for the exit.
        if REPORTED.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        eprintln!("error: {}", crate::human::printable(&text));
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        // `_exit`, not `exit`: exit runs the thread's TLS destructors, and
        // sled's, over a sled that just panicked, panic again.
        // SAFETY: `_exit` ends the process; nothing after it runs.
        unsafe { libc::_exit(i32::from(code)) }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_panics_read_as_a_damaged_store_and_others_as_a_bug() {
        let store = std::path::Path::new("/data/bbcrawl");
        let (text, code) = describe(
            "tried to serialize Uninitialized",
            "vendor/sled/src/serialization.rs",
            662,
            Some(store),
        );
        assert_eq!(code, 1);
        assert!(
            text.starts_with("the store at /data/bbcrawl is damaged"),
            "{text}"
        );
        assert!(text.contains("bbcrawl sync"), "{text}");
        let (text, code) = describe(
            "index out of bounds",
            "/root/.cargo/registry/src/x/sled-0.34.7/src/pagecache/segment.rs",
            1,
            None,
        );
        assert_eq!(code, 1);
        assert!(text.starts_with("the store is damaged"), "{text}");
        let (text, code) = describe("oops", "src/schedule.rs", 9, Some(store));
        assert_eq!(code, crate::exit::INTERNAL);
        assert!(text.contains("a bug in bbcrawl"), "{text}");
    }
}
