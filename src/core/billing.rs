//! Money for pay-per-token billing: prices per 1,000,000 tokens and what a request costs, in
//! integer micro-units of the gateway's one currency (1 USD = 1,000,000), never floats.
//!
//! Rounding: each meter of each request is rounded once, half up, to the micro-unit; a
//! request's total is the sum of its rounded meters, and every report adds those. A price is
//! exact to the micro-unit per million tokens, so no decimal type is needed: a `u64` of
//! micro-units holds 18 trillion units of the currency, and the products are taken in `u128`.
//! The parser is written here because it is a few lines over a fixed six-decimal point (a
//! general decimal crate would add a type the rest of the code has no use for).

use std::fmt;

/// Micro-units in one unit of the currency.
pub const MICROS_PER_UNIT: u64 = 1_000_000;
/// Prices are per this many tokens.
pub const TOKENS_PER_PRICE: u64 = 1_000_000;

/// An amount of money, in micro-units of the gateway's currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub u64);

impl Micros {
    /// An amount as written in the configuration or a request: `"0.30"`, `"12"`, `"0.000001"`
    /// (digits, at most one point and six decimals; no sign, exponent or separator).
    pub fn parse(text: &str) -> Result<Micros, String> {
        let bad =
            || format!("'{text}' is not an amount: write digits with at most six decimals, e.g. \"0.30\" or \"12.5\"");
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
            return Err(bad());
        }
        if fraction.len() > 6 {
            return Err(format!("'{text}' has more than six decimals: amounts are exact to the micro-unit (0.000001)"));
        }
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let mut micros: u64 = 0;
        for (i, digit) in fraction.bytes().chain(std::iter::repeat(b'0')).take(6).enumerate() {
            micros += u64::from(digit - b'0') * 10u64.pow(5 - i as u32);
        }
        whole
            .checked_mul(MICROS_PER_UNIT)
            .and_then(|w| w.checked_add(micros))
            .map(Micros)
            .ok_or_else(|| format!("'{text}' is too large"))
    }

    pub fn saturating_add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }
}

/// Six decimals, always: `0.300000`.
impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / MICROS_PER_UNIT, self.0 % MICROS_PER_UNIT)
    }
}

/// What a model's tokens cost, per [`TOKENS_PER_PRICE`] tokens of each meter. A new meter
/// (cached input, say) is a field here, a variant of [`Meter`] and a column of [`Cost`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: Micros,
    pub output: Micros,
}

/// What a request is billed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Meter {
    /// Prompt tokens.
    Input,
    /// Completion tokens.
    Output,
}

impl Meter {
    pub const ALL: [Meter; 2] = [Meter::Input, Meter::Output];

    pub fn as_str(self) -> &'static str {
        match self {
            Meter::Input => "input",
            Meter::Output => "output",
        }
    }
}

/// What one request cost, per meter (each rounded on its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub input: Micros,
    pub output: Micros,
}

impl Cost {
    pub fn total(&self) -> Micros {
        self.input.saturating_add(self.output)
    }

    pub fn of(&self, meter: Meter) -> Micros {
        match meter {
            Meter::Input => self.input,
            Meter::Output => self.output,
        }
    }
}

impl Prices {
    /// What `prompt` input and `completion` output tokens cost.
    pub fn cost(&self, prompt: u64, completion: u64) -> Cost {
        Cost { input: charge(prompt, self.input), output: charge(completion, self.output) }
    }
}

/// How many of `thresholds` (percentages, ascending) `spent` has reached of `amount`: a
/// threshold is reached at `spent × 100 >= amount × threshold` (exactly, in `u128`).
pub fn thresholds_reached(amount: Micros, spent: u64, thresholds: &[u16]) -> usize {
    let spent = u128::from(spent) * 100;
    thresholds.iter().take_while(|t| spent >= u128::from(amount.0) * u128::from(**t)).count()
}

/// `tokens × price / 1,000,000`, rounded half up to the micro-unit.
fn charge(tokens: u64, per_million: Micros) -> Micros {
    let exact = u128::from(tokens) * u128::from(per_million.0);
    let half = u128::from(TOKENS_PER_PRICE / 2);
    Micros(u64::try_from((exact + half) / u128::from(TOKENS_PER_PRICE)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_parse_exactly_and_print_with_six_decimals() {
        assert_eq!(Micros::parse("0.30"), Ok(Micros(300_000)));
        assert_eq!(Micros::parse("12"), Ok(Micros(12_000_000)));
        assert_eq!(Micros::parse("0.000001"), Ok(Micros(1)));
        assert_eq!(Micros::parse(".5"), Ok(Micros(500_000)));
        assert_eq!(Micros::parse("3."), Ok(Micros(3_000_000)));
        for bad in ["", ".", "-1", "1e3", "1,5", "0.0000001", " 1", "abc", "99999999999999999999"] {
            assert!(Micros::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Micros(1_234_567).to_string(), "1.234567");
        assert_eq!(Micros(5).to_string(), "0.000005");
    }

    #[test]
    fn each_meter_is_rounded_half_up_on_its_own() {
        // $0.30 / $0.61 per million: 19 prompt tokens cost 5.7 micro-units, 9 completion 5.49.
        let prices = Prices { input: Micros(300_000), output: Micros(610_000) };
        let cost = prices.cost(19, 9);
        assert_eq!((cost.input, cost.output, cost.total()), (Micros(6), Micros(5), Micros(11)));
        // Exactly half a micro-unit rounds up.
        assert_eq!(Prices { input: Micros(500_000), output: Micros(0) }.cost(1, 0).input, Micros(1));
        assert_eq!(Prices { input: Micros(499_999), output: Micros(0) }.cost(1, 0).input, Micros(0));
        assert_eq!(Prices::default().cost(1_000_000, 1_000_000).total(), Micros(0));
    }

    #[test]
    fn a_threshold_is_reached_exactly_at_its_share() {
        let amount = Micros(1_000_000);
        assert_eq!(thresholds_reached(amount, 499_999, &[50, 80, 100]), 0);
        assert_eq!(thresholds_reached(amount, 500_000, &[50, 80, 100]), 1);
        assert_eq!(thresholds_reached(amount, 999_999, &[50, 80, 100]), 2);
        assert_eq!(thresholds_reached(amount, 5_000_000, &[50, 80, 100]), 3);
        assert_eq!(thresholds_reached(amount, 1_500_000, &[100, 150, 200]), 2);
    }

    proptest! {
        #[test]
        fn thresholds_reached_only_grow_with_spend(amount in 1u64..1u64 << 50, a in 0u64..1u64 << 52, b in 0u64..1u64 << 52) {
            let t = [1u16, 50, 80, 100, 250];
            let (low, high) = (a.min(b), a.max(b));
            prop_assert!(thresholds_reached(Micros(amount), low, &t) <= thresholds_reached(Micros(amount), high, &t));
        }

        #[test]
        fn a_charge_is_within_half_a_micro_unit_of_the_exact_amount(
            tokens in 0u64..1u64 << 40,
            price in 0u64..1u64 << 40,
        ) {
            let charged = u128::from(charge(tokens, Micros(price)).0);
            let exact_times_million = u128::from(tokens) * u128::from(price);
            // |charged - exact| <= 1/2, with ties up: 2·charged·1e6 - 2·exact in (-1e6, 1e6].
            let twice_charged = 2 * charged * 1_000_000;
            let twice_exact = 2 * exact_times_million;
            prop_assert!(twice_charged + 1_000_000 > twice_exact);
            prop_assert!(twice_charged <= twice_exact + 1_000_000);
        }

        #[test]
        fn amounts_round_trip_through_their_text(micros in 0u64..u64::MAX / 2) {
            prop_assert_eq!(Micros::parse(&Micros(micros).to_string()), Ok(Micros(micros)));
        }
    }
}
