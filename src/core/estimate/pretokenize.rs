//! cl100k's pre-tokenizer for ASCII text, by hand: the same pieces as `bpe-openai`'s regex
//! (checked against it by the tests below, exhaustively for short strings and on random ones).
//!
//! Why by hand: the regex (a lazy DFA behind a thread-keyed cache pool) was ~7,500 of the
//! ~13,000 instructions the estimate of a short chat cost (BENCHMARKS.md), and two worker threads
//! contend for its cache. Prompts are mostly ASCII; anything else goes to the regex.
//!
//! The pattern, in priority order (the first alternative that matches at a position wins):
//! 1. `(?i:'s|'t|'re|'ve|'m|'ll|'d)`
//! 2. `[^\r\n\p{L}\p{N}]?\p{L}+`
//! 3. `\p{N}{1,3}`
//! 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
//! 5. `\s*[\r\n]+`
//! 6. `\s+$`
//! 7. `\s+(?!\S)` (bpe-openai: `\s+\s` without its last character)
//! 8. `\s+`
//!
//! In ASCII `\p{L}` is `[A-Za-z]`, `\p{N}` is `[0-9]` and `\s` is `[\t\n\x0B\x0C\r ]`.

fn letter(b: u8) -> bool {
    b.is_ascii_alphabetic()
}

fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

fn newline(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Neither space, letter nor digit.
fn other(b: u8) -> bool {
    !space(b) && !letter(b) && !digit(b)
}

/// Calls `piece` with each piece of `text`, which must be ASCII.
pub fn split_ascii(text: &[u8], mut piece: impl FnMut(&[u8])) {
    let mut at = 0;
    while at < text.len() {
        let end = piece_end(text, at);
        piece(&text[at..end]);
        at = end;
    }
}

/// Where the piece starting at `i` ends (always past `i`).
fn piece_end(t: &[u8], i: usize) -> usize {
    let n = t.len();
    let run = |from: usize, class: fn(u8) -> bool| from + t[from..].iter().take_while(|&&b| class(b)).count();
    let b = t[i];
    // 1. Contractions.
    if b == b'\'' && i + 1 < n {
        let c = t[i + 1].to_ascii_lowercase();
        if matches!(c, b's' | b't' | b'm' | b'd') {
            return i + 2;
        }
        if i + 2 < n {
            let d = t[i + 2].to_ascii_lowercase();
            if matches!((c, d), (b'r', b'e') | (b'v', b'e') | (b'l', b'l')) {
                return i + 3;
            }
        }
    }
    // 2. A word, with one leading character that is no newline, letter or digit.
    if letter(b) {
        return run(i, letter);
    }
    if !newline(b) && !digit(b) && i + 1 < n && letter(t[i + 1]) {
        return run(i + 1, letter);
    }
    // 3. Up to three digits.
    if digit(b) {
        return i + t[i..].iter().take(3).take_while(|&&b| digit(b)).count();
    }
    // 4. Punctuation, with one leading space, and the newlines after it.
    let p = if b == b' ' { i + 1 } else { i };
    if p < n && other(t[p]) {
        return run(run(p, other), newline);
    }
    // What is left starts a run of whitespace.
    let j = run(i, space);
    // 5. Whitespace up to its last newline.
    if let Some(last) = (i..j).rev().find(|&k| newline(t[k])) {
        return last + 1;
    }
    // 6. Whitespace to the end of the text.
    if j == n {
        return n;
    }
    // 7. Whitespace that is followed by more of it (the last one goes with the next word).
    if j - i >= 2 {
        return j - 1;
    }
    // 8.
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        split_ascii(text.as_bytes(), |p| out.push(String::from_utf8(p.to_vec()).unwrap()));
        out
    }

    fn regex(text: &str) -> Vec<String> {
        bpe_openai::cl100k_base().split(text).map(str::to_owned).collect()
    }

    /// Every character class the pattern tells apart, and the letters of the contractions.
    const ALPHABET: &[u8] = b"aSrEvLdmt1' \t\n\r\x0b\x0c!.\x00\x7f";

    #[test]
    fn every_short_string_splits_as_the_regex_does() {
        let mut text = Vec::new();
        for len in 1..=4u32 {
            for mut index in 0..ALPHABET.len().pow(len) {
                text.clear();
                for _ in 0..len {
                    text.push(ALPHABET[index % ALPHABET.len()]);
                    index /= ALPHABET.len();
                }
                let text = std::str::from_utf8(&text).unwrap();
                assert_eq!(ours(text), regex(text), "{text:?}");
            }
        }
    }

    #[test]
    fn prose_and_code_split_as_the_regex_does() {
        for text in [
            "You are a helpful assistant.",
            "Say hello in one short sentence.",
            "fn main() {\n    println!(\"{}\", 12345 + 6);\n}\n\n",
            "It's   they'RE  we'll   I'm\r\n\r\n  done  ",
            "  leading and trailing  \t",
            "a\x0b\x0cb  \n\n\t x",
        ] {
            assert_eq!(ours(text), regex(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn random_ascii_splits_as_the_regex_does(bytes in proptest::collection::vec(
            prop_oneof![
                4 => proptest::sample::select(ALPHABET.to_vec()),
                1 => 0u8..0x80,
            ],
            0..64,
        )) {
            let text = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(ours(&text), regex(&text));
        }
    }
}
