"""The PII scrubber (selflearn.core.privacy) on real MASSIVE utterances of six scripts, into
which e-mail addresses, phone numbers and digit runs are inserted; and its place in the
pipeline: before the text key, on slot values and served rewrites too."""
from __future__ import annotations

import json
import re
from importlib import resources

import pandas as pd
import pytest

from selflearn.config import Settings
from selflearn.core.privacy import EMAIL_MASK, MASKS, NUMBER_MASK, PHONE_MASK, scrub_utterance
from selflearn.core.sessions import enrich_turns
from selflearn.core.text import normalize_text

# locale -> the script's own decimal digits (None: ASCII), unspaced script or not
LOCALES = {
    "en-US": None,                      # Latin
    "ru-RU": None,                      # Cyrillic
    "zh-CN": "０１２３４５６７８９",     # CJK, full-width digits
    "ja-JP": "０１２３４５６７８９",
    "ar-SA": "٠١٢٣٤٥٦٧٨٩",             # Arabic-Indic
    "fa-IR": "۰۱۲۳۴۵۶۷۸۹",             # Extended Arabic-Indic (Persian)
    "th-TH": "๐๑๒๓๔๕๖๗๘๙",             # Thai
    "hi-IN": "०१२३४५६७८९",             # Devanagari
}


def _digits(s: str, table: str | None) -> str:
    return s if table is None else s.translate(str.maketrans("0123456789", table))


def _pii(table):
    return [
        ("jane.doe+1987@example.org", EMAIL_MASK),
        ("ＪＡＮＥ＠ＥＸＡＭＰＬＥ．ＯＲＧ", EMAIL_MASK),  # full-width: NFKC first
        ("+49 30 1234 5678", PHONE_MASK),
        ("(555) 123-4567", PHONE_MASK),
        (_digits("+1 415 555 2671", table), PHONE_MASK),
        (_digits("07700900123", table), NUMBER_MASK),
    ]


def _insert(utt: str, piece: str) -> str:
    """The piece in the middle of a real utterance (between words, or between characters
    of an unspaced script)."""
    words = utt.split(" ")
    if len(words) > 1:
        return " ".join(words[: len(words) // 2] + [piece] + words[len(words) // 2 :])
    mid = len(utt) // 2
    return utt[:mid] + piece + utt[mid:]


def test_masks_survive_normalize_text_unchanged():
    for mask in MASKS:
        assert normalize_text(mask) == mask
        assert scrub_utterance(mask) == (mask, 0)


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_pii_inserted_into_real_utterances_is_masked_and_nothing_else_changes(massive, locale):
    records = massive(locale, 40)[::4]
    for r in records:
        utt = r["utt"]
        for piece, mask in _pii(LOCALES[locale]):
            dirty = _insert(utt, piece)
            scrubbed, n = scrub_utterance(dirty)
            key = normalize_text(scrubbed)
            assert n == 1, (dirty, scrubbed)
            assert mask in key.split(), (dirty, key)
            # no digit and no '@' of the PII is left, and the rest of the utterance is intact
            assert not any(ch.isdecimal() for ch in key) and "@" not in scrubbed
            assert " ".join(key.replace(mask, " ").split()) == normalize_text(_insert(utt, " "))


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_times_years_amounts_and_dates_survive(massive, locale):
    table = LOCALES[locale]
    keep = ["7 am", "2019", "10:30", "1,000,000", "12/03/2019", "2019-03-12", "24.12.2026", "15 30 45"]
    for r in massive(locale, 20)[::5]:
        for piece in keep:
            piece = _digits(piece, table)
            dirty = _insert(r["utt"], piece)
            assert scrub_utterance(dirty) == (scrub_utterance(dirty)[0], 0), dirty
            assert normalize_text(scrub_utterance(dirty)[0]) == normalize_text(dirty)


def test_digit_threshold_is_a_setting(massive):
    utt = massive("en-US", 1)[0]["utt"]
    dirty = _insert(utt, "12345")
    assert scrub_utterance(dirty, min_digits=7)[1] == 0
    assert NUMBER_MASK in scrub_utterance(dirty, min_digits=5)[0].split()


def test_spoken_email_and_spoken_digits_in_real_massive_utterances(massive):
    """MASSIVE's own spoken e-mail addresses (email_addcontact / sendemail records) are
    masked; a spoken phone number inserted into a real utterance too."""
    spoken = [r["utt"] for r in massive("en-US") if " at " in r["utt"] and r["utt"].endswith(" dot com")][:10]
    assert spoken
    for utt in spoken:
        scrubbed, n = scrub_utterance(utt)
        assert n >= 1 and EMAIL_MASK in scrubbed.split() and " dot com" not in scrubbed, utt
    utt = massive("en-US", 3)[2]["utt"]
    scrubbed, n = scrub_utterance(_insert(utt, "five five five two six seven one"))
    assert n == 1 and NUMBER_MASK in scrubbed.split()
    assert scrub_utterance(_insert(utt, "five five five"))[1] == 0  # three digit words: a count, not a number



def test_a_spoken_address_touching_unspaced_words_is_masked(massive):
    """Japanese, Chinese and Thai put no space between words, and a Korean particle attaches
    to the word before it: a spoken address is still one when such a word touches it.
    The Korean record is MASSIVE's own; the Japanese one is a ja-JP email record whose
    sender ("母") is said as an address in the form ja-JP records write one (Latin,
    spoken), with no space, as the simulator renders it and Japanese ASR writes it."""
    rec = next(r for r in massive("ko-KR") if r["utt"].startswith("joanne at a. o. l. dot com으로"))
    assert scrub_utterance(rec["utt"])[0].startswith(EMAIL_MASK + " 으로 ")
    ja = next(r for r in massive("ja-JP") if r["utt"] == "母からの最後のメールの件名は何")
    said = "john at gmail dot com" + ja["utt"][1:]
    out = scrub_utterance(said)[0]
    assert out == EMAIL_MASK + " からの最後のメールの件名は何", (said, out)
    for text in ("3時に起こして", "iphoneの設定", "bts의 노래를 틀어 줘"):  # a seam alone is no address
        assert scrub_utterance(text) == (text, 0)

# --- spoken e-mail addresses outside English (selflearn/spoken_email.json, from MASSIVE) ---

SPOKEN_EMAIL_LOCALES = ("es-ES", "ru-RU", "pl-PL", "it-IT", "he-IL", "ko-KR", "sv-SE", "hu-HU")


def _email_values(rec) -> list[str]:
    return re.findall(r"\[email_address : ([^\]]*)\]", rec["annot_utt"])


def test_dictated_addresses_of_held_out_massive_records_are_masked(massive):
    """The table was built from MASSIVE's train partition; its test and dev records'
    dictated addresses ("juan arroba gmail punto com", "иван собака gmail точка com") are
    masked, address and all, and none of those partitions' other records gets a mask."""
    masked, held = 0, 0
    for locale in SPOKEN_EMAIL_LOCALES:
        for rec in massive(locale):
            if rec["partition"] == "train":
                continue
            scrubbed = scrub_utterance(rec["utt"])[0]
            values = [v for v in _email_values(rec) if len(v.split()) >= 4]  # with a local part
            if not _email_values(rec):
                assert EMAIL_MASK not in scrubbed, (locale, rec["utt"])
            elif values:
                held += 1
                if EMAIL_MASK in scrubbed.split():
                    masked += 1
                    domain = values[0].split()[-3]  # "<local> <at> DOMAIN <dot> <tld>"
                    assert domain not in scrubbed.split(), (locale, scrubbed)
    assert held >= 80 and masked >= 0.85 * held, (masked, held)  # 84 of 95 when written (0.88)


def test_one_languages_words_never_pair_with_anothers():
    """'point' is French for '.', 'at' English for '@', 'in' India's domain: an English
    sentence with all three is no address; each language's words make one only together."""
    for text in ("remind me at this point in time", "rendez-vous à midi point de rencontre",
                 "play the song at the point de la nuit", "alarm at seven punto com"):
        assert scrub_utterance(text) == (text, 0), text
    for text, expected in (("envía un correo a juan arroba gmail punto com por favor", "envía un correo a xxemailxx por favor"),
                           ("skicka till john snabel a. gmail punkt com", "skicka till xxemailxx"),
                           ("schicke frohes neues jahr an jonas at g. m. x. punkt d. e.", "schicke frohes neues jahr an xxemailxx"),
                           ("john 골뱅이 지메일 닷컴으로 이메일 보내줘", "xxemailxx 이메일 보내줘")):
        assert scrub_utterance(text) == (expected, 1), text


def test_the_shipped_spoken_email_table_is_what_the_script_builds():
    from bench.spoken_email import build

    shipped = json.loads(resources.files("selflearn").joinpath("spoken_email.json").read_text("utf-8"))
    assert build() == shipped
    assert len(shipped["locales"]) == 52
    assert "arroba" in shipped["locales"]["es-ES"]["at"] and "punto" in shipped["locales"]["es-ES"]["dot"]


def _turns(massive):
    recs = massive("en-US", 3)
    base = dict(user_id="u1", device_id="d1", session_id=None, locale="en-US", asr_confidence=0.9,
                response_status="success", barge_in=False, feedback=None, dwell_ms=20000, nlu_intent="email_addcontact",
                nlu_domain="email")
    rows = []
    for i, r in enumerate(recs):
        rows.append(dict(base, event_id=f"e{i}", ts=pd.Timestamp("2026-11-02 08:00", tz="UTC") + pd.Timedelta(seconds=30 * i),
                         order=i, utterance=_insert(r["utt"], "jane.doe@example.org"),
                         nlu_slots=[{"name": "personal_info", "value": "jane.doe@example.org"},
                                    {"name": "phone", "value": "+44 20 7946 0958"}],
                         rewritten_from=_insert(r["utt"], "+44 20 7946 0958") if i == 2 else None))
    return pd.DataFrame(rows)


def test_enrich_turns_keys_slots_and_served_rewrites_are_scrubbed(massive):
    out = enrich_turns(_turns(massive), Settings())
    assert out["text"].str.contains(EMAIL_MASK).all()
    assert not out["text"].str.contains("example|jane", regex=True).any()
    values = [s["value"] for slots in out["nlu_slots"] for s in slots]
    assert set(values) == {EMAIL_MASK, PHONE_MASK}
    assert PHONE_MASK in out["rewritten_from"].dropna().iloc[0].split()
    # the masked slot value still projects onto the masked key (weak labels keep working)
    from selflearn.core.labels import project_slots

    assert project_slots(out["text"].iloc[0], [{"name": "personal_info", "value": values[0]}]) is not None


def test_scrubbing_can_be_turned_off(massive):
    out = enrich_turns(_turns(massive), Settings(scrub_pii=False))
    assert out["text"].str.contains("jane doe example org").all()
    assert not out["text"].str.contains(EMAIL_MASK).any()


# --- spoken numbers outside English (selflearn/spoken_numbers.json, from num2words) -------

def _number_table() -> dict:
    import json
    from importlib import resources

    return json.loads(resources.files("selflearn").joinpath("spoken_numbers.json").read_text("utf-8"))


def _spoken(locale: str, digits: str) -> str:
    """`digits` said digit by digit in the locale's language, from the scrubber's own table
    (num2words' words): Han numerals for ja/zh, which Japanese and Chinese phone numbers use."""
    table = _number_table()
    lang = locale.split("-")[0]
    if lang in ("ja", "zh"):
        return "".join("〇一二三四五六七八九"[int(d)] for d in digits)
    by_value = {}
    for word, value in table["spaced"][lang].items():
        by_value.setdefault(value, word)
    return " ".join(by_value[int(d)] for d in digits)


SPOKEN_LOCALES = ("de-DE", "fr-FR", "es-ES", "ru-RU", "ar-SA", "tr-TR", "vi-VN", "pl-PL", "bn-BD", "ja-JP", "zh-CN")


@pytest.mark.parametrize("locale", SPOKEN_LOCALES)
def test_spoken_phone_numbers_outside_english_are_masked(massive, locale):
    lang = locale.split("-")[0]
    table = _number_table()
    words = set(table["spaced"].get(lang, {})) | set(table["unspaced"]["han"])
    # a real utterance with no number word of its own ("... for two hours" would add one)
    utt = next(r["utt"] for r in massive(locale, 50)
               if not words & set(r["utt"].casefold().split()) and not words & set(r["utt"]))
    scrubbed, n = scrub_utterance(_insert(utt, _spoken(locale, "01712345678")))
    assert n == 1 and NUMBER_MASK in scrubbed.split(), scrubbed
    # six digits said are a count, a time or a date part, not a number of a person
    assert scrub_utterance(_insert(utt, _spoken(locale, "123456")))[1] == 0


def test_spoken_numbers_in_pairs_and_in_unspaced_scripts():
    """Real shapes of a number said aloud: German and French in pairs (a 10-99 word is two
    digits; "vingt-deux" is one number), Korean digit syllables grouped, Thai unspaced."""
    said = ["meine nummer ist null einundsiebzig zweiundzwanzig dreiunddreißig",  # ß case-folds to ss
            "mon numéro est zéro six, vingt-deux, quarante-et-un, dix-huit, soixante",
            "제 번호는 공일공 일이삼사 오육칠팔 입니다",
            "เบอร์ของฉันคือศูนย์แปดหนึ่งสองสามสี่ห้าหก"]
    for text in said:
        scrubbed, n = scrub_utterance(text)
        assert n == 1 and NUMBER_MASK in scrubbed.split(), text
    # a French year and a Vietnamese date: a 10-99 word and the digit after it are one number
    for text in ("supprime la liste de dix-neuf quatre-vingt-dix",
                 "hủy báo thức ngày mười tháng ba năm hai không mười bảy",
                 "mon numéro est zéro six quarante deux dix huit"):  # 06 42 18: six digits
        assert scrub_utterance(text)[1] == 0, text


def test_real_massive_number_words_are_not_masked(massive):
    """MASSIVE has times, dates, counts and amounts said as words in every language and no
    one's phone number: in the locales the table covers, no utterance gets a number mask but
    one Japanese postal code, seven digits said as Han numerals (as its digits would be)."""
    masked = []
    for locale in SPOKEN_LOCALES + ("ko-KR", "th-TH", "it-IT", "pt-PT", "nl-NL", "hu-HU", "fi-FI", "zh-TW", "en-US", "ro-RO"):
        for r in massive(locale):
            out, n = scrub_utterance(r["utt"])
            if n and NUMBER_MASK in out.split():
                masked.append((locale, r["utt"]))
    assert masked == [("ja-JP", "郵便番号一二三四五六七の地域イベントを検索して")]


# --- shapes an adversarial probe found (2026-12-05): real transcripts, real number forms ---

def _slot_texts() -> list[tuple[str, str]]:
    """(text, address) of every SLURP test/devel transcript and HWU64 annotated answer
    whose e-mail slot holds a written '@': dictated addresses typed half in words
    ("joe@aol dot com", "johndoe@yahoocom")."""
    import csv

    from tests.conftest import DATA

    slot = re.compile(r"\[email_address : ([^\]]*)\]")
    out = []
    for name in ("test.jsonl", "devel.jsonl"):
        for line in (DATA / "slurp" / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            out += [(r["sentence"], v) for v in slot.findall(r["sentence_annotation"]) if "@" in v]
    seen = set()
    for f in sorted((DATA / "hwu64").glob("KFold_*/testset_csv/*.csv")):
        with f.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter=";"):
                if row["answerid"] not in seen:
                    seen.add(row["answerid"])
                    out += [(row["answer_from_anno"], v) for v in slot.findall(row["answer_annotation"]) if "@" in v]
    return out


def test_written_at_with_said_or_lost_dots_in_real_transcripts_is_masked():
    texts = _slot_texts()
    assert len(texts) >= 40 and any(" dot " in a for _, a in texts) and any("." not in a for _, a in texts)
    left = [(t, out) for t, out in ((t, scrub_utterance(t)[0]) for t, _ in texts)
            if EMAIL_MASK not in out.split() or "@" in out]
    assert left == [], left[:5]


def test_number_word_table_is_in_the_scrubbers_input_form():
    """The scrubber's input is NFKC-normalised and case-folded; a table word that is not
    (num2words' Kannada and Telugu tens were not) can never match."""
    import unicodedata

    table = _number_table()
    bad = [w for ws in table["spaced"].values() for w in ws if unicodedata.normalize("NFKC", w).casefold() != w]
    assert bad == []
    assert "ఇరవై" in table["spaced"]["te"]


@pytest.mark.parametrize("locale,said", [
    ("en-US", "five five five twelve thirty four"),             # teens and tens in English
    ("en-US", "two oh six, five five five, oh one nine three"),  # commas between the groups
    ("en-US", "nought seven niner one two three four"),
    ("en-US", "555 one two three four"),                         # a digit group among the words
    ("en-US", "five five five 1234"),
    ("te-IN", "అరవై ఇరవై ఎనభై డెబ్బై"),                          # tens as num2words writes them, NFKC
    ("ar-SA", "صفر خمسة اثنين اثنين ثلاث اربعة سبعة"),            # Arabic as MASSIVE's Arabic writes it
    ("ro-RO", "zero sapte doi doi noua opt sase"),               # Romanian without diacritics
    ("es-ES", "seis doce treinta y cuatro cincuenta y seis"),    # 6 12 34 56: pairs with 'y'
    ("pt-PT", "nove um dois trinta e quatro cinquenta e seis"),
    ("es-ES", "612.345.678"),                                    # a Spanish mobile as written
    # hundreds, as Russian and Turkish say a number in 3-2-2 groups: 8 916 123 45 67, 532 45 67
    ("ru-RU", "восемь девятьсот шестнадцать сто двадцать три сорок пять шестьдесят семь"),
    ("tr-TR", "beş yüz otuz iki kırk beş altmış yedi"),
])
def test_number_shapes_a_probe_found_are_masked(massive, locale, said):
    utt = massive(locale, 1)[0]["utt"]
    scrubbed, n = scrub_utterance(_insert(utt, said))
    assert n == 1 and (NUMBER_MASK in scrubbed.split() or PHONE_MASK in scrubbed.split()), scrubbed


@pytest.mark.parametrize("text", [
    "running to rock 170 to 190 bpm",          # SNIPS: Norwegian 'to' (2) between two counts
    "put frank farian on lydia's playlist called the black power mixtape 1967 to 1975",
    "can i increase my credit limit from 1000 to 2000 please",  # CLINC150
    "1.234.567 habitantes", "100.000.000 euros", "1.234.567,50 euros",  # amounts, grouped
    "treinta y cuatro personas y cinco mesas",  # a count, not a number of a person
    "купи сто двадцать три яблока", "beş yüz otuz iki",  # one number with its hundred: 3 digits
])
def test_counts_amounts_and_ranges_stay(text):
    assert scrub_utterance(text)[1] == 0, text
