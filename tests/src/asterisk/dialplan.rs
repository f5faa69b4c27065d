//! The `from-icegate` context of docs/asterisk/extensions.conf, as the recordings show it
//! behaving.

/// What the dialplan does with an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `Answer()` + `Echo()` (600).
    Echo,
    /// `Busy()` (601): 486 Busy Here with `Reason: Q.850;cause=17`.
    Busy,
    /// `Ringing()` + `Wait(60)` (602): 180 Ringing until the caller cancels.
    Ringing,
    /// `Stasis(icegate,${EXTEN})` (`_X.`: any other number).
    Stasis { app: String, args: Vec<String> },
    /// No such extension: 404 Not Found.
    NotFound,
}

/// The context, with per-test overrides.
#[derive(Debug, Clone)]
pub struct Dialplan {
    pub context: String,
    pub stasis_app: String,
    /// Checked first: exact extension → route.
    pub overrides: Vec<(String, Route)>,
}

impl Default for Dialplan {
    fn default() -> Self {
        Dialplan {
            context: "from-icegate".into(),
            stasis_app: "icegate".into(),
            overrides: vec![],
        }
    }
}

impl Dialplan {
    pub fn route(&self, exten: &str) -> Route {
        if let Some((_, r)) = self.overrides.iter().find(|(e, _)| e == exten) {
            return r.clone();
        }
        match exten {
            "600" => Route::Echo,
            "601" => Route::Busy,
            "602" => Route::Ringing,
            // `_X.`: a digit followed by at least one more character (the recordings used
            // 700); names such as `nosuchuser` match nothing.
            e if e.len() >= 2 && e.as_bytes()[0].is_ascii_digit() => Route::Stasis {
                app: self.stasis_app.clone(),
                args: vec![e.to_string()],
            },
            _ => Route::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_extensions() {
        let d = Dialplan::default();
        assert_eq!(d.route("600"), Route::Echo);
        assert_eq!(d.route("601"), Route::Busy);
        assert_eq!(d.route("602"), Route::Ringing);
        assert_eq!(
            d.route("700"),
            Route::Stasis {
                app: "icegate".into(),
                args: vec!["700".into()]
            }
        );
        assert_eq!(d.route("nosuchuser"), Route::NotFound);
        assert_eq!(d.route("7"), Route::NotFound, "_X. needs two characters");
    }
}
