//! Closed sets of metric label values, declared with [`label_values!`](crate::label_values).
//!
//! prometheus-client's `#[derive(EncodeLabelValue)]` exports a variant's identifier verbatim
//! (`NoLuck`), but the names our dashboards, scripts and tests read are snake_case
//! (`no_luck`) and must not change. The macro keeps each variant beside the text it exports,
//! so a label set can be a struct deriving `EncodeLabelSet` whose fields are enums, and a
//! typo is a compile error rather than a new time series.

#[doc(hidden)]
pub use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Declares an enum of label values and the text each exports.
///
/// The enum derives `Debug, Clone, Copy, PartialEq, Eq, Hash` (what a label set's field
/// needs) and gets `ALL` (every value, in declaration order), `as_str()`, `Display`, and
/// prometheus-client's `EncodeLabelValue`, all writing the declared text. Each variant's
/// documentation ends with the text it exports.
///
/// ```
/// shake_ops::label_values! {
///     /// How a shake ended.
///     pub enum Verdict {
///         /// Nothing won.
///         NoLuck => "no_luck",
///         Forwarded => "forwarded",
///     }
/// }
/// assert_eq!(Verdict::NoLuck.as_str(), "no_luck");
/// assert_eq!(Verdict::ALL, [Verdict::NoLuck, Verdict::Forwarded]);
/// assert_eq!(Verdict::Forwarded.to_string(), "forwarded");
/// ```
#[macro_export]
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                #[doc = concat!("\n\nExported as `", $text, "`.")]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            $vis const ALL: [Self; [$(stringify!($variant)),+].len()] = [$(Self::$variant),+];

            /// The text this value exports.
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::labels::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut $crate::labels::LabelValueEncoder<'_>,
            ) -> ::core::fmt::Result {
                ::core::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// Creates the series of every label set in `label_sets` at its zero value. A series whose
/// first sample is already 1 shows no increase to `rate()` or `increase()`, so an alert on a
/// process's first count of a value would not fire; a closed set of values is exported from
/// the start instead.
pub fn export_from_zero<S, M, C>(
    family: &prometheus_client::metrics::family::Family<S, M, C>,
    label_sets: impl IntoIterator<Item = S>,
) where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    for labels in label_sets {
        let _ = family.get_or_create(&labels);
    }
}

/// The labelled series of a Prometheus text exposition, sorted, without their values: what a
/// test compares with the names the dashboards read. Histogram buckets are left out, and so is
/// `build_info`, whose revision changes with every commit.
pub fn labelled_series(exposition: &str) -> Vec<&str> {
    let mut series: Vec<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('{'))
        .filter(|l| !l.contains("_bucket{") && !l.contains("_build_info{"))
        .filter_map(|l| Some(l.rsplit_once(' ')?.0))
        .collect();
    series.sort_unstable();
    series
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    crate::label_values! {
        /// A test set whose texts differ from the identifiers.
        enum Outcome {
            RateLimited => "rate_limited",
            /// Documented.
            Ok => "fine",
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Labels {
        outcome: Outcome,
        worker: u16,
    }

    #[test]
    fn the_declared_text_is_exported() {
        let family: Family<Labels, Counter> = Family::default();
        family.get_or_create(&Labels { outcome: Outcome::RateLimited, worker: 3 }).inc_by(2);
        family.get_or_create(&Labels { outcome: Outcome::Ok, worker: 0 }).inc();
        let mut registry = Registry::with_prefix("t");
        registry.register("things", "Things", family);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String");
        assert!(
            text.contains("t_things_total{outcome=\"rate_limited\",worker=\"3\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("t_things_total{outcome=\"fine\",worker=\"0\"} 1\n"), "{text}");
        assert_eq!(
            super::labelled_series(&text),
            [
                "t_things_total{outcome=\"fine\",worker=\"0\"}",
                "t_things_total{outcome=\"rate_limited\",worker=\"3\"}",
            ]
        );
        assert_eq!(Outcome::ALL.map(Outcome::as_str), ["rate_limited", "fine"]);
        assert_eq!(format!("{}", Outcome::RateLimited), "rate_limited");
    }
}
