//! Key names as xdotool spells them (`Return`, `ctrl+l`, `alt+F4`, `a`,
//! `eacute`) and characters, turned into X keysyms.

/// `Return`.
pub const RETURN: u32 = 0xff0d;
/// `Tab`.
pub const TAB: u32 = 0xff09;
/// `Shift_L`, pressed for the second level of a key.
pub const SHIFT_L: u32 = 0xffe1;

/// Named keysyms beyond single characters, by their X names.
const NAMED: &[(&str, u32)] = &[
    ("BackSpace", 0xff08),
    ("Tab", TAB),
    ("ISO_Left_Tab", 0xfe20),
    ("Linefeed", 0xff0a),
    ("Clear", 0xff0b),
    ("Return", RETURN),
    ("Pause", 0xff13),
    ("Scroll_Lock", 0xff14),
    ("Sys_Req", 0xff15),
    ("Escape", 0xff1b),
    ("Delete", 0xffff),
    ("Home", 0xff50),
    ("Left", 0xff51),
    ("Up", 0xff52),
    ("Right", 0xff53),
    ("Down", 0xff54),
    ("Prior", 0xff55),
    ("Page_Up", 0xff55),
    ("Next", 0xff56),
    ("Page_Down", 0xff56),
    ("End", 0xff57),
    ("Begin", 0xff58),
    ("Select", 0xff60),
    ("Print", 0xff61),
    ("Execute", 0xff62),
    ("Insert", 0xff63),
    ("Undo", 0xff65),
    ("Redo", 0xff66),
    ("Menu", 0xff67),
    ("Find", 0xff68),
    ("Cancel", 0xff69),
    ("Help", 0xff6a),
    ("Break", 0xff6b),
    ("Num_Lock", 0xff7f),
    ("KP_Space", 0xff80),
    ("KP_Tab", 0xff89),
    ("KP_Enter", 0xff8d),
    ("KP_Home", 0xff95),
    ("KP_Left", 0xff96),
    ("KP_Up", 0xff97),
    ("KP_Right", 0xff98),
    ("KP_Down", 0xff99),
    ("KP_Prior", 0xff9a),
    ("KP_Page_Up", 0xff9a),
    ("KP_Next", 0xff9b),
    ("KP_Page_Down", 0xff9b),
    ("KP_End", 0xff9c),
    ("KP_Begin", 0xff9d),
    ("KP_Insert", 0xff9e),
    ("KP_Delete", 0xff9f),
    ("KP_Equal", 0xffbd),
    ("KP_Multiply", 0xffaa),
    ("KP_Add", 0xffab),
    ("KP_Separator", 0xffac),
    ("KP_Subtract", 0xffad),
    ("KP_Decimal", 0xffae),
    ("KP_Divide", 0xffaf),
    ("Shift_L", SHIFT_L),
    ("Shift_R", 0xffe2),
    ("Control_L", 0xffe3),
    ("Control_R", 0xffe4),
    ("Caps_Lock", 0xffe5),
    ("Shift_Lock", 0xffe6),
    ("Meta_L", 0xffe7),
    ("Meta_R", 0xffe8),
    ("Alt_L", 0xffe9),
    ("Alt_R", 0xffea),
    ("Super_L", 0xffeb),
    ("Super_R", 0xffec),
    ("Hyper_L", 0xffed),
    ("Hyper_R", 0xffee),
    ("ISO_Level3_Shift", 0xfe03),
    ("space", 0x20),
    ("exclam", 0x21),
    ("quotedbl", 0x22),
    ("numbersign", 0x23),
    ("dollar", 0x24),
    ("percent", 0x25),
    ("ampersand", 0x26),
    ("apostrophe", 0x27),
    ("quoteright", 0x27),
    ("parenleft", 0x28),
    ("parenright", 0x29),
    ("asterisk", 0x2a),
    ("plus", 0x2b),
    ("comma", 0x2c),
    ("minus", 0x2d),
    ("period", 0x2e),
    ("slash", 0x2f),
    ("colon", 0x3a),
    ("semicolon", 0x3b),
    ("less", 0x3c),
    ("equal", 0x3d),
    ("greater", 0x3e),
    ("question", 0x3f),
    ("at", 0x40),
    ("bracketleft", 0x5b),
    ("backslash", 0x5c),
    ("bracketright", 0x5d),
    ("asciicircum", 0x5e),
    ("underscore", 0x5f),
    ("grave", 0x60),
    ("quoteleft", 0x60),
    ("braceleft", 0x7b),
    ("bar", 0x7c),
    ("braceright", 0x7d),
    ("asciitilde", 0x7e),
    ("nobreakspace", 0xa0),
    ("Adiaeresis", 0xc4),
    ("Odiaeresis", 0xd6),
    ("Udiaeresis", 0xdc),
    ("ssharp", 0xdf),
    ("agrave", 0xe0),
    ("aacute", 0xe1),
    ("adiaeresis", 0xe4),
    ("ccedilla", 0xe7),
    ("egrave", 0xe8),
    ("eacute", 0xe9),
    ("ntilde", 0xf1),
    ("odiaeresis", 0xf6),
    ("udiaeresis", 0xfc),
    ("EuroSign", 0x20ac),
    ("XF86AudioLowerVolume", 0x1008_ff11),
    ("XF86AudioMute", 0x1008_ff12),
    ("XF86AudioRaiseVolume", 0x1008_ff13),
    ("XF86AudioPlay", 0x1008_ff14),
    ("XF86AudioStop", 0x1008_ff15),
    ("XF86AudioPrev", 0x1008_ff16),
    ("XF86AudioNext", 0x1008_ff17),
    ("XF86Back", 0x1008_ff26),
    ("XF86Forward", 0x1008_ff27),
    ("XF86Reload", 0x1008_ff73),
];

/// Short names agents and xdotool use for the keys above, lower-case.
const ALIASES: &[(&str, &str)] = &[
    ("ctrl", "Control_L"),
    ("control", "Control_L"),
    ("shift", "Shift_L"),
    ("alt", "Alt_L"),
    ("meta", "Meta_L"),
    ("super", "Super_L"),
    ("win", "Super_L"),
    ("cmd", "Super_L"),
    ("command", "Super_L"),
    ("enter", "Return"),
    ("esc", "Escape"),
    ("del", "Delete"),
    ("backspace", "BackSpace"),
    ("pageup", "Prior"),
    ("pgup", "Prior"),
    ("pagedown", "Next"),
    ("pgdn", "Next"),
    ("arrowleft", "Left"),
    ("arrowright", "Right"),
    ("arrowup", "Up"),
    ("arrowdown", "Down"),
    ("capslock", "Caps_Lock"),
    ("printscreen", "Print"),
];

/// The keysym of character `c`: Latin-1 characters are their own code,
/// others are `0x01000000 + code point` (X's Unicode keysyms); newline and
/// tab are `Return` and `Tab`.
pub fn keysym_of_char(c: char) -> u32 {
    match c {
        '\n' | '\r' => RETURN,
        '\t' => TAB,
        ' '..='~' | '\u{a0}'..='\u{ff}' => c as u32,
        _ => 0x0100_0000 + c as u32,
    }
}

/// The keysym named `name`: a single character, an X keysym name
/// (`Return`, `F5`, `KP_Enter`, `eacute`), an alias (`ctrl`, `enter`,
/// `esc`), a keysym number (`0xff0d`), matched exactly first and then
/// ignoring case.
pub fn keysym_by_name(name: &str) -> Option<u32> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return Some(keysym_of_char(c));
    }
    if let Some(&(_, sym)) = NAMED.iter().find(|(n, _)| *n == name) {
        return Some(sym);
    }
    if let Some(sym) = function_key(name) {
        return Some(sym);
    }
    if let Some(hex) = name.strip_prefix("0x") {
        return u32::from_str_radix(hex, 16).ok();
    }
    let lower = name.to_ascii_lowercase();
    if let Some(&(_, canonical)) = ALIASES.iter().find(|(a, _)| *a == lower) {
        return keysym_by_name(canonical);
    }
    if let Some(&(_, sym)) = NAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(sym);
    }
    // `KP_0`..`KP_9`.
    let digit = lower.strip_prefix("kp_")?;
    let d = digit.parse::<u32>().ok().filter(|d| *d <= 9)?;
    Some(0xffb0 + d)
}

/// `F1` .. `F35`.
fn function_key(name: &str) -> Option<u32> {
    let n = name
        .strip_prefix('F')
        .or_else(|| name.strip_prefix('f'))?
        .parse::<u32>()
        .ok()?;
    (1..=35).contains(&n).then(|| 0xffbe + n - 1)
}

/// The keysyms of one chord: names joined by `+` (`ctrl+shift+t`; a `+`
/// key itself is `plus`, or a lone `+`).
pub fn parse_chord(chord: &str) -> Result<Vec<u32>, String> {
    if chord == "+" {
        return Ok(vec![0x2b]);
    }
    chord
        .split('+')
        .map(|name| {
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("empty key name in `{chord}`"));
            }
            keysym_by_name(name).ok_or_else(|| format!("unknown key name `{name}`"))
        })
        .collect()
}

/// The chords of a `key` action's text, separated by white space
/// (`ctrl+a Delete`), at least one.
pub fn parse_chords(text: &str) -> Result<Vec<Vec<u32>>, String> {
    let chords: Vec<Vec<u32>> = text
        .split_whitespace()
        .map(parse_chord)
        .collect::<Result<_, _>>()?;
    if chords.is_empty() {
        return Err("no key given".into());
    }
    Ok(chords)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdotool_names_and_aliases() {
        assert_eq!(keysym_by_name("Return"), Some(RETURN));
        assert_eq!(keysym_by_name("enter"), Some(RETURN));
        assert_eq!(keysym_by_name("RETURN"), Some(RETURN));
        assert_eq!(keysym_by_name("ctrl"), Some(0xffe3));
        assert_eq!(keysym_by_name("F1"), Some(0xffbe));
        assert_eq!(keysym_by_name("F12"), Some(0xffc9));
        assert_eq!(keysym_by_name("F36"), None);
        assert_eq!(keysym_by_name("KP_7"), Some(0xffb7));
        assert_eq!(keysym_by_name("a"), Some(0x61));
        assert_eq!(keysym_by_name("A"), Some(0x41));
        assert_eq!(keysym_by_name("é"), Some(0xe9));
        assert_eq!(keysym_by_name("€"), Some(0x0100_20ac));
        assert_eq!(keysym_by_name("0xff0d"), Some(RETURN));
        assert_eq!(keysym_by_name("minus"), Some(0x2d));
        assert_eq!(keysym_by_name("nonsense"), None);
    }

    #[test]
    fn chords_and_sequences() {
        assert_eq!(parse_chord("ctrl+a").unwrap(), vec![0xffe3, 0x61]);
        assert_eq!(
            parse_chord("ctrl+shift+T").unwrap(),
            vec![0xffe3, SHIFT_L, 0x54]
        );
        assert_eq!(parse_chord("+").unwrap(), vec![0x2b]);
        assert_eq!(parse_chord("ctrl+plus").unwrap(), vec![0xffe3, 0x2b]);
        assert!(parse_chord("ctrl+").is_err());
        assert!(parse_chord("ctrl+bogus").unwrap_err().contains("bogus"));
        assert_eq!(parse_chords("ctrl+a  Delete").unwrap().len(), 2);
        assert!(parse_chords("  ").is_err());
    }

    #[test]
    fn characters_map_to_latin1_or_unicode_keysyms() {
        assert_eq!(keysym_of_char('h'), 0x68);
        assert_eq!(keysym_of_char('ö'), 0xf6);
        assert_eq!(keysym_of_char('\n'), RETURN);
        assert_eq!(keysym_of_char('中'), 0x0100_4e2d);
    }
}
