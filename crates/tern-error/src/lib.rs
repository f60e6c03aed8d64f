//! Error reporting shared by Tern's crates.
//!
//! Every crate's errors are `thiserror` enums with short messages and
//! `#[source]` chains; where one is shown to a person (a log line, an API
//! reply, a CLI message) the whole chain goes on one line, outermost first,
//! so the message names both what failed and why.

/// One line: `e` and its sources, outermost first, joined by `": "`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Makes a panic on any thread end the whole process once the panic
/// message is printed, as `panic = "abort"` does, whatever profile the
/// binary was built with. A worker whose vCPU or device thread panicked
/// must not run on half-alive, nor a daemon with a dead task thread; the
/// test build (which must unwind for its harness) then behaves like the
/// release build. Call it first thing in `main`.
pub fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn joins_every_source_outermost_first() {
        let e = Layer(
            "cannot open disk 0",
            Some(Box::new(Layer(
                "bad VHDX header",
                Some(Box::new(Layer("checksum mismatch", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "cannot open disk 0: bad VHDX header: checksum mismatch"
        );
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
