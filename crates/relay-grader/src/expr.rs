//! The math expression tree and its parser, for LaTeX and plain-text answers.
//!
//! One recursive-descent parser reads both `\frac{1}{2}\sqrt3 x^{2}` and `sqrt(3)*x**2`.
//! Structure above single expressions (tuples, sets, intervals, relations, matrices) lives
//! in `answer`; this module only knows scalar expressions. Every entry point is bounded:
//! input length, nesting depth and number literal size are capped, and a failure is an
//! `Err`, never a panic.

use num_bigint::BigInt;
use num_rational::BigRational;

/// Longest number literal we accept, in digits; longer ones are garbage for grading.
const MAX_DIGITS: usize = 400;
/// Deepest nesting of groups, fractions, powers and function calls.
const MAX_DEPTH: usize = 48;

/// Functions the evaluator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Sqrt,
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    Exp,
    Abs,
    Floor,
    Ceil,
    Fact,
    /// `\sqrt[n]{x}`: args are (x, n).
    Root,
    /// `\log_b x`: args are (x, b).
    LogBase,
    /// `\binom{n}{k}`.
    Binom,
}

/// A scalar math expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// An exact number; `decimal` is true when it was written with a decimal point, which
    /// the `verify` mode compares with rounding (as math-verify does with sympy Floats).
    Num {
        value: BigRational,
        decimal: bool,
    },
    Sym(String),
    Pi,
    E,
    I,
    Inf,
    Add(Vec<Expr>),
    Mul(Vec<Expr>),
    Neg(Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

impl Expr {
    pub fn int(n: i64) -> Expr {
        Expr::Num {
            value: BigRational::from_integer(BigInt::from(n)),
            decimal: false,
        }
    }

    /// True for a bare number (possibly negated), the "atomic Number" of math-verify.
    pub fn as_number(&self) -> Option<(BigRational, bool)> {
        match self {
            Expr::Num { value, decimal } => Some((value.clone(), *decimal)),
            Expr::Neg(e) => e.as_number().map(|(v, d)| (-v, d)),
            _ => None,
        }
    }

    /// Symbol names used anywhere in the expression.
    pub fn symbols(&self, out: &mut Vec<String>) {
        match self {
            Expr::Sym(s) if !out.contains(s) => out.push(s.clone()),
            Expr::Add(v) | Expr::Mul(v) | Expr::Call(_, v) => v.iter().for_each(|e| e.symbols(out)),
            Expr::Neg(e) => e.symbols(out),
            Expr::Div(a, b) | Expr::Pow(a, b) => {
                a.symbols(out);
                b.symbols(out)
            }
            _ => {}
        }
    }

    /// If the expression is a product of letters only (how `Evelyn` parses), the word.
    pub fn as_word(&self) -> Option<String> {
        match self {
            Expr::Sym(s) => Some(s.clone()),
            Expr::E => Some("e".into()),
            Expr::I => Some("i".into()),
            Expr::Mul(v) => v.iter().map(|e| e.as_word()).collect(),
            _ => None,
        }
    }
}

/// How bare words read: math-verify's LaTeX reading (`e` is Euler's number) or sympy's
/// plain reading used by mathruler (`e` and `i` are ordinary symbols, `I`/`E` after
/// lowercasing never occur).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Latex,
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

type PResult<T> = Result<T, ParseError>;

/// Parse one scalar expression; the whole input must be consumed.
pub fn parse_expr(src: &str, dialect: Dialect) -> PResult<Expr> {
    let mut p = Parser::new(src, dialect);
    let e = p.sum()?;
    p.skip_ws();
    if p.pos != p.chars.len() {
        return Err(ParseError("trailing input"));
    }
    Ok(e)
}

pub(crate) struct Parser {
    pub(crate) chars: Vec<char>,
    pub(crate) pos: usize,
    depth: usize,
    abs_open: usize,
    dialect: Dialect,
}

const FUNC_WORDS: &[(&str, Func)] = &[
    ("arcsin", Func::Asin),
    ("arccos", Func::Acos),
    ("arctan", Func::Atan),
    ("asin", Func::Asin),
    ("acos", Func::Acos),
    ("atan", Func::Atan),
    ("sinh", Func::Sinh),
    ("cosh", Func::Cosh),
    ("tanh", Func::Tanh),
    ("sqrt", Func::Sqrt),
    ("sin", Func::Sin),
    ("cos", Func::Cos),
    ("tan", Func::Tan),
    ("sec", Func::Sec),
    ("csc", Func::Csc),
    ("cot", Func::Cot),
    ("log", Func::Ln),
    ("ln", Func::Ln),
    ("exp", Func::Exp),
    ("abs", Func::Abs),
    ("floor", Func::Floor),
    ("ceil", Func::Ceil),
];

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

impl Parser {
    pub(crate) fn new(src: &str, dialect: Dialect) -> Parser {
        Parser {
            chars: src.chars().collect(),
            pos: 0,
            depth: 0,
            abs_open: 0,
            dialect,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).copied()
    }

    pub(crate) fn skip_ws(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() || c == '~' => self.pos += 1,
                // LaTeX spacing commands carry no meaning.
                Some('\\') => {
                    let save = self.pos;
                    let name = self.peek_command();
                    if matches!(
                        name.as_str(),
                        "," | ";"
                            | ":"
                            | "!"
                            | " "
                            | "quad"
                            | "qquad"
                            | "left"
                            | "right"
                            | "bigl"
                            | "bigr"
                            | "Bigl"
                            | "Bigr"
                            | "big"
                            | "Big"
                            | "displaystyle"
                    ) {
                        self.pos = save + 1 + name.chars().count();
                    } else {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// The name of the command at `pos` (which must be a backslash), without consuming it.
    fn peek_command(&self) -> String {
        let mut i = self.pos + 1;
        let mut s = String::new();
        while let Some(&c) = self.chars.get(i) {
            if c.is_ascii_alphabetic() {
                s.push(c);
                i += 1;
            } else {
                break;
            }
        }
        if s.is_empty() {
            if let Some(&c) = self.chars.get(self.pos + 1) {
                s.push(c);
            }
        }
        s
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_cmd(&mut self, name: &str) -> bool {
        self.skip_ws();
        if self.peek() == Some('\\') && self.peek_command() == name {
            self.pos += 1 + name.chars().count();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError("nesting too deep"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    pub(crate) fn sum(&mut self) -> PResult<Expr> {
        self.enter()?;
        let mut terms = Vec::new();
        self.skip_ws();
        let mut neg = false;
        if self.eat('-') {
            neg = true;
        } else if self.eat('+') {
        } else if self.eat_cmd("pm") || self.eat_cmd("mp") {
            return Err(ParseError("plus-minus"));
        }
        loop {
            let t = self.term()?;
            terms.push(if neg { Expr::Neg(Box::new(t)) } else { t });
            self.skip_ws();
            if self.eat('+') {
                neg = false;
            } else if self.eat('-') || self.eat('−') {
                neg = true;
            } else {
                break;
            }
        }
        self.leave();
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Expr::int(0))
        } else {
            Expr::Add(terms)
        })
    }

    fn term(&mut self) -> PResult<Expr> {
        let mut acc = self.unary()?;
        loop {
            self.skip_ws();
            let c = match self.peek() {
                Some(c) => c,
                None => break,
            };
            if c == '*' && self.peek_at(1) != Some('*') || c == '·' || c == '×' {
                self.pos += 1;
                let r = self.unary()?;
                acc = mul(acc, r);
            } else if c == '/' || c == '÷' {
                self.pos += 1;
                let r = self.unary()?;
                acc = Expr::Div(Box::new(acc), Box::new(r));
            } else if c == '\\' {
                let name = self.peek_command();
                match name.as_str() {
                    "cdot" | "times" | "ast" => {
                        self.pos += 1 + name.len();
                        let r = self.unary()?;
                        acc = mul(acc, r);
                    }
                    "div" => {
                        self.pos += 1 + name.len();
                        let r = self.unary()?;
                        acc = Expr::Div(Box::new(acc), Box::new(r));
                    }
                    "frac" | "dfrac" | "tfrac"
                        if matches!(acc, Expr::Num { decimal: false, .. }) =>
                    {
                        // `3\frac{1}{2}` is the mixed number 7/2, as latex2sympy reads it.
                        let r = self.power()?;
                        acc = match r {
                            Expr::Div(a, b)
                                if a.as_number().is_some() && b.as_number().is_some() =>
                            {
                                Expr::Add(vec![acc, Expr::Div(a, b)])
                            }
                            r => mul(acc, r),
                        };
                    }
                    _ if self.starts_primary() => {
                        let r = self.power()?;
                        acc = mul(acc, r);
                    }
                    _ => break,
                }
            } else if self.starts_primary() {
                // Implicit multiplication: `2x`, `3\sqrt{2}`, `(a)(b)`.
                let r = self.power()?;
                acc = mul(acc, r);
            } else {
                break;
            }
        }
        Ok(acc)
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(c)
                if c.is_ascii_alphanumeric()
                    || c == '.' && self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) =>
            {
                true
            }
            Some('(') | Some('[') | Some('{') | Some('π') | Some('√') | Some('∞') => true,
            Some('|') => self.abs_open == 0,
            Some('\\') => {
                let n = self.peek_command();
                !matches!(
                    n.as_str(),
                    "cdot"
                        | "times"
                        | "div"
                        | "le"
                        | "leq"
                        | "ge"
                        | "geq"
                        | "lt"
                        | "gt"
                        | "ne"
                        | "neq"
                        | "right"
                        | "end"
                        | "cup"
                        | "cap"
                        | "in"
                        | "}"
                        | "pm"
                        | "mp"
                        | "approx"
                        | "to"
                        | "rightarrow"
                        | "Rightarrow"
                        | "implies"
                        | "iff"
                        | "leqslant"
                        | "geqslant"
                        | "%"
                        | "rvert"
                        | "rangle"
                        | ","
                        | ";"
                        | "quad"
                        | "qquad"
                        | "land"
                        | "lor"
                        | "wedge"
                        | "vee"
                        | "setminus"
                        | "&"
                        | "\\"
                        | "neg"
                        | "mid"
                        | "rfloor"
                        | "rceil"
                        | "rbrace"
                        | "rbrack"
                        | "over"
                )
            }
            _ => false,
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        self.skip_ws();
        if self.eat('-') {
            self.enter()?;
            let e = self.unary()?;
            self.leave();
            return Ok(Expr::Neg(Box::new(e)));
        }
        if self.eat('+') {
            self.enter()?;
            let e = self.unary();
            self.leave();
            return e;
        }
        self.power()
    }

    fn power(&mut self) -> PResult<Expr> {
        self.enter()?;
        let base = self.postfix()?;
        self.skip_ws();
        let out = if self.peek() == Some('^')
            || (self.peek() == Some('*') && self.peek_at(1) == Some('*'))
        {
            if self.peek() == Some('*') {
                self.pos += 2;
            } else {
                self.pos += 1;
            }
            let exp = self.script_arg()?;
            let mut e = Expr::Pow(Box::new(base), Box::new(exp));
            // `n!` after an exponent binds to the power in neither notation; keep it simple.
            while self.eat('!') {
                e = Expr::Call(Func::Fact, vec![e]);
            }
            e
        } else {
            base
        };
        self.leave();
        Ok(out)
    }

    /// The argument of `^` or `_`: a braced group, or a single token (`x^2`, `x^-1`, `x^ab`
    /// reads `x^a b` as LaTeX does).
    fn script_arg(&mut self) -> PResult<Expr> {
        self.skip_ws();
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let e = self.sum()?;
                if !self.eat('}') {
                    return Err(ParseError("unclosed script"));
                }
                Ok(e)
            }
            Some('-') => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.script_arg()?)))
            }
            Some(c) if c.is_ascii_digit() => {
                if self.dialect == Dialect::Plain {
                    // sympy reads `x^23` as x**23.
                    self.number()
                } else {
                    self.pos += 1;
                    Ok(Expr::int(c as i64 - '0' as i64))
                }
            }
            Some('(') => self.power(),
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> PResult<Expr> {
        let mut e = self.primary()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.peek() == Some('!') && self.peek_at(1) != Some('=') {
                self.pos += 1;
                e = Expr::Call(Func::Fact, vec![e]);
            } else if self.peek() == Some('%')
                || self.peek() == Some('\\') && self.peek_at(1) == Some('%')
            {
                // A percent inside an expression (`8\% + 1`) is a hundredth.
                self.pos += if self.peek() == Some('%') { 1 } else { 2 };
                e = Expr::Div(Box::new(e), Box::new(Expr::int(100)));
            } else {
                self.pos = save;
                break;
            }
        }
        Ok(e)
    }

    fn group(&mut self, close: char) -> PResult<Expr> {
        let e = self.sum()?;
        self.skip_ws();
        if !self.eat(close) {
            return Err(ParseError("unclosed group"));
        }
        Ok(e)
    }

    /// A required `{...}` argument, or a single character/command (`\frac12`).
    fn macro_arg(&mut self) -> PResult<Expr> {
        self.skip_ws();
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.group('}')
            }
            Some(c) if c.is_ascii_digit() => {
                self.pos += 1;
                Ok(Expr::int(c as i64 - '0' as i64))
            }
            Some(_) => self.primary(),
            None => Err(ParseError("missing argument")),
        }
    }

    fn number(&mut self) -> PResult<Expr> {
        let start = self.pos;
        let mut int_part = String::new();
        let mut frac_part = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                int_part.push(c);
                self.pos += 1;
            } else if c == '_'
                && self.dialect == Dialect::Plain
                && !int_part.is_empty()
                && self.peek_at(1).is_some_and(|d| d.is_ascii_digit())
            {
                // Python reads `40_9` as the literal 409.
                self.pos += 1;
            } else {
                break;
            }
        }
        let mut decimal = false;
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            decimal = true;
            self.pos += 1;
            while let Some(c) = self.peek() {
                if c.is_ascii_digit() {
                    frac_part.push(c);
                    self.pos += 1;
                } else {
                    break;
                }
            }
        } else if self.peek() == Some('.') && !int_part.is_empty() && self.dialect == Dialect::Plain
        {
            // `5.` is a float in Python.
            self.pos += 1;
            decimal = true;
        } else if self.peek() == Some('.')
            && !int_part.is_empty()
            && matches!(self.peek_at(1), Some('/' | '*' | ')'))
        {
            // `-1./3`, as some gold answers write a float numerator.
            self.pos += 1;
            decimal = true;
        }
        if int_part.len() + frac_part.len() > MAX_DIGITS || self.pos == start {
            return Err(ParseError("bad number"));
        }
        let digits = format!(
            "{}{}",
            if int_part.is_empty() { "0" } else { &int_part },
            frac_part
        );
        let n: BigInt = digits.parse().map_err(|_| ParseError("bad number"))?;
        let d = BigInt::from(10u32).pow(frac_part.len() as u32);
        let mut value = BigRational::new(n, d);
        // Scientific notation in plain text: `4.5e33`, `1e-3`.
        if self.dialect == Dialect::Plain && self.peek() == Some('e') {
            let sign_len = usize::from(matches!(self.peek_at(1), Some('-') | Some('+')));
            if self
                .peek_at(1 + sign_len)
                .is_some_and(|c| c.is_ascii_digit())
            {
                let neg = self.peek_at(1) == Some('-');
                self.pos += 1 + sign_len;
                let mut exp = 0u32;
                while let Some(c) = self.peek().filter(|c| c.is_ascii_digit()) {
                    exp = exp.saturating_mul(10).saturating_add(c as u32 - '0' as u32);
                    self.pos += 1;
                }
                if exp > MAX_DIGITS as u32 {
                    return Err(ParseError("exponent too large"));
                }
                let p = BigRational::from_integer(BigInt::from(10u32).pow(exp));
                value = if neg { value / p } else { value * p };
                decimal = true;
            }
        }
        Ok(Expr::Num { value, decimal })
    }

    fn primary(&mut self) -> PResult<Expr> {
        self.enter()?;
        let r = self.primary_inner();
        self.leave();
        r
    }

    fn primary_inner(&mut self) -> PResult<Expr> {
        self.skip_ws();
        let c = self.peek().ok_or(ParseError("unexpected end"))?;
        if c.is_ascii_digit() || c == '.' {
            let n = self.number()?;
            // A number in another base, `2516_8` or `4210_{5}`: an opaque symbol.
            if self.peek() == Some('_') {
                let digits: String = self.chars[..self.pos]
                    .iter()
                    .rev()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                self.pos += 1;
                let sub = self.subscript_text()?;
                let digits: String = digits.chars().rev().collect();
                return Ok(Expr::Sym(format!("{digits}_{sub}")));
            }
            return Ok(n);
        }
        match c {
            '(' => {
                self.pos += 1;
                return self.group(')');
            }
            '{' => {
                self.pos += 1;
                return self.group('}');
            }
            '[' => {
                self.pos += 1;
                return self.group(']');
            }
            '|' => {
                self.pos += 1;
                self.abs_open += 1;
                let e = self.sum();
                self.abs_open -= 1;
                let e = e?;
                if !self.eat('|') {
                    return Err(ParseError("unclosed |"));
                }
                return Ok(Expr::Call(Func::Abs, vec![e]));
            }
            'π' => {
                self.pos += 1;
                return Ok(Expr::Pi);
            }
            '∞' => {
                self.pos += 1;
                return Ok(Expr::Inf);
            }
            '√' => {
                self.pos += 1;
                let a = self.macro_arg()?;
                return Ok(Expr::Call(Func::Sqrt, vec![a]));
            }
            '\\' => return self.command(),
            _ => {}
        }
        if c.is_alphabetic() {
            return self.word();
        }
        Err(ParseError("unexpected character"))
    }

    /// Letters outside commands: known function names (plain text), else one symbol per
    /// letter, with an optional subscript (`x_1`, `a_{n}`).
    fn word(&mut self) -> PResult<Expr> {
        let rest: String = self.chars[self.pos..].iter().take(8).collect();
        for (name, f) in FUNC_WORDS {
            if rest.starts_with(name) {
                let next = self.chars.get(self.pos + name.len()).copied();
                if next.is_some_and(|c| {
                    c == '('
                        || c == '{'
                        || c == '['
                        || c.is_whitespace()
                        || c == '^'
                        || c.is_ascii_digit()
                }) {
                    self.pos += name.len();
                    return self.apply_func(*f);
                }
            }
        }
        if rest.starts_with("pi") && self.dialect == Dialect::Plain {
            self.pos += 2;
            return Ok(Expr::Pi);
        }
        if rest.starts_with("oo") && self.dialect == Dialect::Plain {
            self.pos += 2;
            return Ok(Expr::Inf);
        }
        let c = self.peek().ok_or(ParseError("unexpected end"))?;
        self.pos += 1;
        let mut name = c.to_string();
        if self.peek() == Some('_') {
            self.pos += 1;
            name.push('_');
            name.push_str(&self.subscript_text()?);
        }
        // latex2sympy reads `f(x)`, `I(0)`, `y(t)` (one atom in parentheses) as a function
        // application, and `x(x+1)` as a product; an application is an opaque symbol here.
        if self.dialect == Dialect::Latex && self.peek() == Some('(') {
            let save = self.pos;
            let close = self.chars[save..].iter().take(16).position(|&c| c == ')');
            if let Some(k) = close {
                let inner: String = self.chars[save + 1..save + k]
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let atom = !inner.is_empty()
                    && (inner.chars().all(|c| c.is_ascii_alphanumeric())
                        && (inner.chars().all(|c| c.is_ascii_digit())
                            || inner.chars().count() == 1)
                        || inner.starts_with('-')
                            && inner[1..].chars().all(|c| c.is_ascii_digit())
                            && inner.len() > 1);
                if atom {
                    self.pos = save + k + 1;
                    return Ok(Expr::Sym(format!("{name}({inner})")));
                }
            }
        }
        if self.dialect == Dialect::Latex && name == "e" {
            return Ok(Expr::E);
        }
        if self.dialect == Dialect::Latex && name == "i" {
            return Ok(Expr::I);
        }
        Ok(Expr::Sym(name))
    }

    fn subscript_text(&mut self) -> PResult<String> {
        self.skip_ws();
        match self.peek() {
            Some('{') => {
                let start = self.pos + 1;
                let mut depth = 0usize;
                while let Some(c) = self.peek() {
                    self.pos += 1;
                    if c == '{' {
                        depth += 1;
                    } else if c == '}' {
                        depth -= 1;
                        if depth == 0 {
                            let s: String = self.chars[start..self.pos - 1]
                                .iter()
                                .filter(|c| !c.is_whitespace())
                                .collect();
                            return Ok(s);
                        }
                    }
                }
                Err(ParseError("unclosed subscript"))
            }
            Some(c) if c.is_alphanumeric() => {
                self.pos += 1;
                Ok(c.to_string())
            }
            _ => Err(ParseError("bad subscript")),
        }
    }

    /// The argument of `\sin x`, `\sin(x)`, `\sin^2 x`, `\log_2 8`.
    fn apply_func(&mut self, f: Func) -> PResult<Expr> {
        self.skip_ws();
        let mut power: Option<Expr> = None;
        let mut base: Option<Expr> = None;
        for _ in 0..2 {
            if self.peek() == Some('^') {
                self.pos += 1;
                power = Some(self.script_arg()?);
            } else if self.peek() == Some('_') && f == Func::Ln {
                self.pos += 1;
                base = Some(self.script_arg()?);
            }
            self.skip_ws();
        }
        let arg = match self.peek() {
            Some('(') | Some('{') | Some('[') => {
                let close = match self.peek() {
                    Some('(') => ')',
                    Some('{') => '}',
                    _ => ']',
                };
                self.pos += 1;
                self.group(close)?
            }
            _ => {
                // `\sin 2x` is sin(2x): a run of implicitly multiplied factors.
                let mut a = self.power()?;
                loop {
                    self.skip_ws();
                    let plain_factor = matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric());
                    if plain_factor {
                        let r = self.power()?;
                        a = mul(a, r);
                    } else {
                        break;
                    }
                }
                a
            }
        };
        let call = match base {
            Some(b) => Expr::Call(Func::LogBase, vec![arg, b]),
            None => Expr::Call(f, vec![arg]),
        };
        Ok(match power {
            Some(p) => Expr::Pow(Box::new(call), Box::new(p)),
            None => call,
        })
    }

    /// Read `{...}` as raw text (for `\text{...}`, `\operatorname{...}`).
    pub(crate) fn raw_group(&mut self) -> PResult<String> {
        self.skip_ws();
        if self.peek() != Some('{') {
            return Err(ParseError("expected {"));
        }
        let start = self.pos + 1;
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == '{' {
                depth += 1;
            } else if c == '}' {
                depth -= 1;
                if depth == 0 {
                    return Ok(self.chars[start..self.pos - 1].iter().collect());
                }
            }
        }
        Err(ParseError("unclosed {"))
    }

    fn command(&mut self) -> PResult<Expr> {
        let name = self.peek_command();
        self.pos += 1 + name.chars().count();
        let f = match name.as_str() {
            "frac" | "dfrac" | "tfrac" | "cfrac" => {
                let a = self.macro_arg()?;
                let b = self.macro_arg()?;
                return Ok(Expr::Div(Box::new(a), Box::new(b)));
            }
            "binom" | "dbinom" | "tbinom" | "choose" => {
                let a = self.macro_arg()?;
                let b = self.macro_arg()?;
                return Ok(Expr::Call(Func::Binom, vec![a, b]));
            }
            "sqrt" => {
                self.skip_ws();
                let index = if self.peek() == Some('[') {
                    self.pos += 1;
                    Some(self.group(']')?)
                } else {
                    None
                };
                let a = self.macro_arg()?;
                return Ok(match index {
                    Some(n) => Expr::Call(Func::Root, vec![a, n]),
                    None => Expr::Call(Func::Sqrt, vec![a]),
                });
            }
            "pi" => return Ok(Expr::Pi),
            "infty" | "infinity" => return Ok(Expr::Inf),
            "e" => return Ok(Expr::E),
            "i" | "imath" => return Ok(Expr::I),
            "lvert" | "vert" => {
                self.abs_open += 1;
                let e = self.sum();
                self.abs_open -= 1;
                let e = e?;
                self.skip_ws();
                if !(self.eat_cmd("rvert") || self.eat_cmd("vert") || self.eat('|')) {
                    return Err(ParseError("unclosed \\lvert"));
                }
                return Ok(Expr::Call(Func::Abs, vec![e]));
            }
            "lfloor" | "lceil" => {
                let e = self.sum()?;
                if !(self.eat_cmd("rfloor") || self.eat_cmd("rceil")) {
                    return Err(ParseError("unclosed floor"));
                }
                let f = if name == "lfloor" {
                    Func::Floor
                } else {
                    Func::Ceil
                };
                return Ok(Expr::Call(f, vec![e]));
            }
            "{" => return self.group_cmd(),
            "text" | "textbf" | "mathrm" | "mathbf" | "textit" | "mathit" | "mbox"
            | "operatorname" | "textrm" | "mathsf" => {
                let raw = self.raw_group()?;
                let t: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
                if let Some(f) = FUNC_WORDS.iter().find(|(n, _)| *n == t).map(|(_, f)| *f) {
                    return self.apply_func(f);
                }
                // A text group that holds math (`\text{5}`) reads as that math.
                if let Ok(e) = parse_expr(&raw, self.dialect) {
                    if t.chars().count() <= 1 || !t.chars().all(|c| c.is_alphabetic()) {
                        return Ok(e);
                    }
                }
                if t.is_empty() || !t.chars().all(|c| c.is_alphanumeric()) {
                    return Err(ParseError("text"));
                }
                return Ok(Expr::Sym(t.to_lowercase()));
            }
            "sin" => Func::Sin,
            "cos" => Func::Cos,
            "tan" => Func::Tan,
            "sec" => Func::Sec,
            "csc" => Func::Csc,
            "cot" => Func::Cot,
            "arcsin" => Func::Asin,
            "arccos" => Func::Acos,
            "arctan" => Func::Atan,
            "sinh" => Func::Sinh,
            "cosh" => Func::Cosh,
            "tanh" => Func::Tanh,
            "ln" | "log" | "lg" => Func::Ln,
            "exp" => Func::Exp,
            "prime" => return Ok(Expr::Sym("prime".into())),
            n if GREEK.contains(&n) || is_symbol_command(n) => {
                // `\theta_w`, `\hbar`, `L_{\odot}`: a named symbol, with its subscript.
                let mut name = n.to_string();
                self.skip_ws();
                if self.peek() == Some('_') {
                    self.pos += 1;
                    name.push('_');
                    name.push_str(&self.subscript_text()?);
                }
                return Ok(Expr::Sym(name));
            }
            _ => return Err(ParseError("unknown command")),
        };
        self.apply_func(f)
    }

    /// `\{ a \}` used as grouping inside an expression.
    fn group_cmd(&mut self) -> PResult<Expr> {
        let e = self.sum()?;
        if !self.eat_cmd("}") {
            return Err(ParseError("unclosed \\{"));
        }
        Ok(e)
    }
}

/// Commands that are names of things (`\hbar`, `\odot`, `\angle`), read as symbols.
/// Structural commands are excluded so that malformed LaTeX still fails to parse.
fn is_symbol_command(n: &str) -> bool {
    !n.is_empty()
        && n.chars().all(|c| c.is_ascii_alphabetic())
        && !matches!(
            n,
            "begin"
                | "end"
                | "boxed"
                | "fbox"
                | "left"
                | "right"
                | "frac"
                | "sqrt"
                | "text"
                | "pm"
                | "mp"
                | "le"
                | "leq"
                | "ge"
                | "geq"
                | "lt"
                | "gt"
                | "ne"
                | "neq"
                | "cup"
                | "cap"
                | "in"
                | "approx"
                | "to"
                | "cdot"
                | "times"
                | "div"
                | "over"
                | "quad"
                | "qquad"
                | "hline"
                | "rfloor"
                | "rceil"
                | "rvert"
                | "rangle"
                | "mid"
                | "setminus"
                | "circ"
        )
}

fn mul(a: Expr, b: Expr) -> Expr {
    match a {
        Expr::Mul(mut v) => {
            v.push(b);
            Expr::Mul(v)
        }
        a => Expr::Mul(vec![a, b]),
    }
}

/// 10^k as an exact rational, for percent and rounding.
pub fn pow10(k: u32) -> BigRational {
    BigRational::from_integer(BigInt::from(10u32).pow(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        for s in [
            r"\frac{1}{2}",
            r"\frac12",
            r"3\sqrt{2}",
            r"x^{2}+2x+1",
            r"\sin^2 x",
            r"\log_2 8",
            "2(x+1)",
            r"\left(3\right)",
            r"|x-1|",
            r"\binom{5}{2}",
            "5!",
            r"\sqrt[3]{8}",
            "sqrt(3)/2",
            "x**2",
            r"\text{Evelyn}",
            r"a_{1}+a_2",
            r"\pi r^2",
            ".5",
        ] {
            assert!(parse_expr(s, Dialect::Latex).is_ok(), "{s}");
        }
    }

    #[test]
    fn rejects_garbage_and_deep_nesting() {
        assert!(parse_expr("((", Dialect::Latex).is_err());
        let deep = "(".repeat(500) + "1" + &")".repeat(500);
        assert!(parse_expr(&deep, Dialect::Latex).is_err());
    }
}
