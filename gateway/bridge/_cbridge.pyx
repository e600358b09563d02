# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled charging bridge: C-level UDI parse, catalog lookup and HL7 rendering into one growing buffer."""

import hashlib
from array import array

from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

from gateway.bridge.hl7template import Slot, credit_template, item_ft1_fragment, item_zud_fragment, message_template
from gateway.bridge.types import (
    MAX_CREDIT_FEN as _PY_MAX_CREDIT_FEN,
    MAX_LOCAL_MS as _PY_MAX_LOCAL_MS,
    MAX_SEQ as _PY_MAX_SEQ,
    utc_offset_ms,
    CompactBatch,
    CreditRequest,
    ItemKeyError,
)


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*)
    bint PyUnicode_CheckExact(object)
    bint PyLong_CheckExact(object)
    bint PyTuple_Check(object)
    long long PyLong_AsLongLongAndOverflow(object, int*)
    void PyErr_Clear()
    int PySet_Contains(object, object) except -1
    int PySet_Add(object, object) except -1
    Py_ssize_t PySet_GET_SIZE(object)
    object PyUnicode_DecodeASCII(const char*, Py_ssize_t, const char*)
    object PyBytes_FromStringAndSize(const char*, Py_ssize_t)
    char* PyBytes_AS_STRING(object)
    Py_ssize_t PyBytes_GET_SIZE(object)
    void* PyDict_GetItem(object, object)
    Py_ssize_t PY_SSIZE_T_MAX


# ---- constants shared with the twin -------------------------------------------------------------

cdef long long MAX_SEQ = _PY_MAX_SEQ
cdef long long MAX_LOCAL_MS = _PY_MAX_LOCAL_MS
cdef long long MAX_CREDIT_FEN = _PY_MAX_CREDIT_FEN
cdef long long MS_PER_DAY = 86400000
cdef int DEVICE_ID_CACHE_LIMIT = 65536

# status codes (RejectReason.code)
cdef enum:
    ST_BAD_EVENT = 1
    ST_MISSING_PATIENT = 2
    ST_BAD_UDI = 3
    ST_UNKNOWN_ITEM = 4
    ST_EXPIRED = 5
    ST_NOT_CHARGEABLE = 6
    ST_MISSING_SERIAL = 7
    ST_SERIAL_ALREADY_CONSUMED = 8

# recognised AIs
cdef enum:
    AI_01 = 0
    AI_10 = 1
    AI_11 = 2
    AI_17 = 3
    AI_21 = 4
    AI_240 = 5
    AI_241 = 6
    AI_30 = 7
    AI_37 = 8
    AI_7003 = 9
    AI_COUNT = 10

cdef const char* AI_NAME[10]
cdef int AI_FIXED[10]
cdef int AI_LEN[10]
cdef int AI_NUMERIC[10]
AI_NAME[:] = [b"01", b"10", b"11", b"17", b"21", b"240", b"241", b"30", b"37", b"7003"]
AI_FIXED[:] = [1, 0, 1, 1, 0, 0, 0, 0, 0, 1]
AI_LEN[:] = [14, 20, 6, 6, 20, 30, 30, 8, 8, 10]
AI_NUMERIC[:] = [1, 0, 1, 1, 0, 0, 0, 1, 1, 1]

# UDI parse errors
cdef enum:
    E_NONE = 0
    E_SYMBOLOGY
    E_EMPTY
    E_EXPECTED_PAREN
    E_UNTERMINATED
    E_UNSUPPORTED_AI
    E_DUPLICATE
    E_WRONG_LENGTH
    E_BAD_AI
    E_TRUNCATED
    E_EMPTY_VALUE
    E_NON_NUMERIC
    E_INVALID_CHAR
    E_TOO_LONG
    E_CHECK_DIGIT
    E_BAD_DATE
    E_NO_GTIN

# template slots (must match hl7template.Slot)
cdef enum:
    S_TIME = 1
    S_CHARGE_ID = 2
    S_ADMISSION = 3
    S_DEPT = 4
    S_ITEM_FT1 = 5
    S_OPERATOR = 6
    S_GTIN = 7
    S_LOT = 8
    S_SERIAL = 9
    S_EXPIRY = 10
    S_ITEM_ZUD = 11
    S_DEVICE = 12
    S_ORIGINAL_ID = 13

assert [int(s) for s in Slot] == list(range(1, 14)), "template slots changed: update _cbridge.pyx"

cdef unsigned char CSET82[256]
# HL7 escaping, a C-level copy of gateway.hl7text.escape_utf8 (kept here for speed): ESCAPE_CODE and
# put_escaped must give the same bytes as that function; tests/test_hl7_escape.py compares them on every byte.
cdef unsigned char ESCAPE_CODE[256]
cdef const char* HEX = b"0123456789ABCDEF"


cdef void _init_tables():
    cdef bytes cset = b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    cdef int i
    for i in range(256):
        CSET82[i] = 0
        ESCAPE_CODE[i] = 0
    for i in range(len(cset)):
        CSET82[<unsigned char>cset[i]] = 1
    for i in range(32):
        ESCAPE_CODE[i] = ord('X')
    ESCAPE_CODE[0x7F] = ord('X')
    ESCAPE_CODE[ord('\\')] = ord('E')
    ESCAPE_CODE[ord('|')] = ord('F')
    ESCAPE_CODE[ord('^')] = ord('S')
    ESCAPE_CODE[ord('&')] = ord('T')
    ESCAPE_CODE[ord('~')] = ord('R')


_init_tables()


# ---- output written straight into bytes objects, grown by doubling, shrunk once at the end ---------

cdef extern from "Python.h":
    ctypedef struct PyObject
    PyObject* new_bytes "PyBytes_FromStringAndSize"(const char*, Py_ssize_t)
    char* bytes_data "PyBytes_AS_STRING"(PyObject*)
    int _PyBytes_Resize(PyObject**, Py_ssize_t)
    void Py_XDECREF(PyObject*)


cdef struct Buf:
    PyObject* obj
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef enum:
    FIRST_RESERVE_MAX = 32 << 20  # most a buffer reserves before anything is written


cdef inline Py_ssize_t first_reserve(Py_ssize_t count, Py_ssize_t per_item) noexcept:
    """About count items of per_item bytes, but no more than FIRST_RESERVE_MAX: the estimate cannot know how
    many events will be refused or how long their texts are, so a buffer opened with it grows (doubling,
    amortised O(1) per byte, buf_reserve) as it is written."""
    if per_item <= 0 or count <= FIRST_RESERVE_MAX // per_item:
        return count * per_item
    return FIRST_RESERVE_MAX


cdef int buf_open(Buf* b, Py_ssize_t cap) except -1:
    b.size = 0
    b.cap = cap if cap > 64 else 64
    b.obj = new_bytes(NULL, b.cap)
    if b.obj == NULL:
        raise MemoryError()
    b.data = bytes_data(b.obj)
    return 0


cdef int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = b.size + extra
    cdef Py_ssize_t cap = b.cap
    if want <= cap:
        return 0
    if want > PY_SSIZE_T_MAX // 2:
        raise MemoryError()
    while cap < want:
        cap *= 2
    if _PyBytes_Resize(&b.obj, cap) < 0:
        b.obj = NULL
        raise MemoryError()
    b.data = bytes_data(b.obj)
    b.cap = cap
    return 0


cdef object buf_close(Buf* b):
    """The written bytes as a bytes object; the buffer gives up its reference."""
    if _PyBytes_Resize(&b.obj, b.size) < 0:
        b.obj = NULL
        raise MemoryError()
    result = <object>b.obj
    Py_XDECREF(b.obj)
    b.obj = NULL
    return result


cdef extern from *:
    """
    /* End a new, not yet shared bytes object (never hashed) at a shorter length without reallocating
       it: the block keeps its size, so a batch does not move its messages once more at the end, and
       the allocator hands a block of the same size, already mapped, to the next batch. */
    static inline void spd_bytes_truncate(PyObject* b, Py_ssize_t size) {
        Py_SET_SIZE(b, size);
        PyBytes_AS_STRING(b)[size] = 0;
    }
    """
    void bytes_truncate "spd_bytes_truncate"(PyObject*, Py_ssize_t) noexcept


cdef object buf_close_in_place(Buf* b):
    """The written bytes as a bytes object; the buffer gives it up.

    When little of the block is left over it is ended in place (no realloc, see spd_bytes_truncate);
    otherwise (many refused events, or the last doubling went far past the end) the block is shrunk,
    so a result never holds much more memory than its bytes.
    """
    if b.cap - b.size > (b.size >> 3) + 65536:
        return buf_close(b)
    bytes_truncate(b.obj, b.size)
    result = <object>b.obj
    Py_XDECREF(b.obj)
    b.obj = NULL
    return result


cdef extern from *:
    """
    /* Copy n bytes with fixed-size moves: overlapping tails, no read or write outside [0, n). */
    static inline __attribute__((always_inline)) char* spd_put(char* out, const char* src, Py_ssize_t n) {
        Py_ssize_t i = 0;
        if (n >= 16) {
            for (; i + 16 <= n; i += 16) memcpy(out + i, src + i, 16);
            if (i < n) memcpy(out + n - 16, src + n - 16, 16);
        } else if (n >= 8) {
            memcpy(out, src, 8);
            memcpy(out + n - 8, src + n - 8, 8);
        } else if (n >= 4) {
            memcpy(out, src, 4);
            memcpy(out + n - 4, src + n - 4, 4);
        } else {
            for (; i < n; i++) out[i] = src[i];
        }
        return out + n;
    }
    """
    char* put "spd_put"(char* out, const char* src, Py_ssize_t n) noexcept


cdef inline char* put_escaped(char* out, const unsigned char* src, Py_ssize_t n) noexcept:
    # must match gateway.hl7text.escape_utf8 (see ESCAPE_CODE)
    cdef Py_ssize_t i
    cdef unsigned char c, code
    for i in range(n):
        c = src[i]
        code = ESCAPE_CODE[c]
        if code == 0:
            out[0] = <char>c
            out += 1
        elif code == b'X':
            out[0] = b'\\'
            out[1] = b'X'
            out[2] = HEX[c >> 4]
            out[3] = HEX[c & 15]
            out[4] = b'\\'
            out += 5
        else:
            out[0] = b'\\'
            out[1] = <char>code
            out[2] = b'\\'
            out += 3
    return out


cdef inline void put2(char* out, int value) noexcept:
    out[0] = <char>(48 + value // 10)
    out[1] = <char>(48 + value % 10)


cdef inline char* put_digits(char* out, long long value, int width) noexcept:
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(48 + value % 10)
        value //= 10
    return out + width


# ---- civil dates (proleptic Gregorian, days since 1970-01-01) -----------------------------------

cdef inline long long days_from_civil(long long y, int m, int d) noexcept:
    cdef long long era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline void civil_from_days(long long z, long long* y, int* m, int* d) noexcept:
    cdef long long era, doe, yoe, doy, mp
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d[0] = <int>(doy - (153 * mp + 2) // 5 + 1)
    m[0] = <int>(mp + 3 if mp < 10 else mp - 9)
    y[0] = yoe + era * 400 + (1 if m[0] <= 2 else 0)


cdef inline int days_in_month(long long y, int m) noexcept:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


cdef inline long long full_year(int yy, long long reference) noexcept:
    cdef long long base = reference - reference % 100
    cdef long long diff = yy - reference % 100
    if diff >= 51:
        return base - 100 + yy
    if diff <= -50:
        return base + 100 + yy
    return base + yy


# ---- the UDI parser ---------------------------------------------------------------------------

cdef struct Udi:
    const unsigned char* gtin
    const unsigned char* lot
    Py_ssize_t lot_len
    const unsigned char* serial
    Py_ssize_t serial_len
    int has_expiry
    long long exp_year
    int exp_month
    int exp_day
    int error
    int error_ai
    Py_ssize_t error_pos


cdef inline bint is_digit(unsigned char c) noexcept:
    return 48 <= c <= 57


cdef inline int fail(Udi* out, int error, int ai, Py_ssize_t pos) noexcept:
    out.error = error
    out.error_ai = ai
    out.error_pos = pos
    return error


cdef int element_ai(const unsigned char* u, Py_ssize_t n, Py_ssize_t pos, int* length) noexcept:
    """The AI starting at pos in an element string, -1 unsupported, -2 not two digits."""
    cdef int a
    if pos + 2 > n or not is_digit(u[pos]) or not is_digit(u[pos + 1]):
        return -2
    a = (u[pos] - 48) * 10 + (u[pos + 1] - 48)
    length[0] = 2
    if a == 1:
        return AI_01
    if a == 10:
        return AI_10
    if a == 11:
        return AI_11
    if a == 17:
        return AI_17
    if a == 21:
        return AI_21
    if a == 30:
        return AI_30
    if a == 37:
        return AI_37
    if a == 24 and pos + 3 <= n and (u[pos + 2] == b'0' or u[pos + 2] == b'1'):
        length[0] = 3
        return AI_240 if u[pos + 2] == b'0' else AI_241
    if a == 70 and pos + 4 <= n and u[pos + 2] == b'0' and u[pos + 3] == b'3':
        length[0] = 4
        return AI_7003
    return -1


cdef int bracketed_ai(const unsigned char* a, Py_ssize_t n) noexcept:
    """The AI whose digits are exactly a[0:n], or -1."""
    cdef int i
    for i in range(AI_COUNT):
        if <Py_ssize_t>len_of(AI_NAME[i]) == n and _same(a, <const unsigned char*>AI_NAME[i], n):
            return i
    return -1


cdef inline Py_ssize_t len_of(const char* s) noexcept:
    cdef Py_ssize_t n = 0
    while s[n] != 0:
        n += 1
    return n


cdef inline bint _same(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef int check_value(Udi* out, int ai, const unsigned char* u, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t i
    cdef unsigned char c
    if not AI_FIXED[ai] and end == start:
        return fail(out, E_EMPTY_VALUE, ai, start)
    if AI_NUMERIC[ai]:
        for i in range(start, end):
            if not is_digit(u[i]):
                return fail(out, E_NON_NUMERIC, ai, i)
    else:
        for i in range(start, end):
            if not CSET82[u[i]]:
                return fail(out, E_INVALID_CHAR, ai, i)
    if not AI_FIXED[ai] and end - start > AI_LEN[ai]:
        return fail(out, E_TOO_LONG, ai, start)
    return E_NONE


cdef inline int two(const unsigned char* p) noexcept:
    return (p[0] - 48) * 10 + (p[1] - 48)


cdef int parse_udi(const unsigned char* u, Py_ssize_t n, long long reference_year, Udi* out) noexcept:
    cdef Py_ssize_t pos = 0, start, end, close, j, limit
    cdef int ai, ai_len, bracketed, month, day, last
    cdef int seen = 0
    cdef long long year
    out.error = E_NONE
    out.gtin = NULL
    out.lot = NULL
    out.lot_len = 0
    out.serial = NULL
    out.serial_len = 0
    out.has_expiry = 0
    if n >= 1 and u[0] == b']':
        if n < 3 or not ((u[1] == b'd' and u[2] == b'2') or (u[1] == b'C' and u[2] == b'1')
                         or (u[1] == b'Q' and u[2] == b'3') or (u[1] == b'e' and u[2] == b'0')):
            return fail(out, E_SYMBOLOGY, 0, 0)
        pos = 3
    bracketed = pos == 0 and n >= 1 and u[0] == b'('
    if not bracketed and pos < n and u[pos] == 0x1D:
        pos += 1
    if pos >= n:
        return fail(out, E_EMPTY, 0, 0)
    while pos < n:
        if bracketed:
            if u[pos] != b'(':
                return fail(out, E_EXPECTED_PAREN, 0, pos)
            close = -1
            limit = pos + 6 if pos + 6 < n else n
            for j in range(pos + 1, limit):
                if u[j] == b')':
                    close = j
                    break
            if close < 0:
                return fail(out, E_UNTERMINATED, 0, pos)
            ai = bracketed_ai(u + pos + 1, close - pos - 1)
            if ai < 0:
                return fail(out, E_UNSUPPORTED_AI, 0, pos)
            if seen & (1 << ai):
                return fail(out, E_DUPLICATE, ai, pos)
            start = close + 1
            end = start
            while end < n and u[end] != b'(':
                end += 1
            if AI_FIXED[ai] and end - start != AI_LEN[ai]:
                return fail(out, E_WRONG_LENGTH, ai, start)
            pos = end
        else:
            ai = element_ai(u, n, pos, &ai_len)
            if ai == -2:
                return fail(out, E_BAD_AI, 0, pos)
            if ai == -1:
                return fail(out, E_UNSUPPORTED_AI, 0, pos)
            if seen & (1 << ai):
                return fail(out, E_DUPLICATE, ai, pos)
            start = pos + ai_len
            if AI_FIXED[ai]:
                end = start + AI_LEN[ai]
                if end > n:
                    return fail(out, E_TRUNCATED, ai, start)
                pos = end + 1 if end < n and u[end] == 0x1D else end
            else:
                end = start
                while end < n and u[end] != 0x1D:
                    end += 1
                pos = end + 1 if end < n else n
        if check_value(out, ai, u, start, end) != E_NONE:
            return out.error
        if ai == AI_01:
            if not gtin_ok(u + start):
                return fail(out, E_CHECK_DIGIT, ai, start)
            out.gtin = u + start
        elif ai == AI_11 or ai == AI_17:
            year = full_year(two(u + start), reference_year)
            month = two(u + start + 2)
            day = two(u + start + 4)
            if month < 1 or month > 12 or year > 9999:
                return fail(out, E_BAD_DATE, ai, start)
            last = days_in_month(year, month)
            if day > last:
                return fail(out, E_BAD_DATE, ai, start)
            if ai == AI_17:
                out.has_expiry = 1
                out.exp_year = year
                out.exp_month = month
                out.exp_day = day if day else last
        elif ai == AI_10:
            out.lot = u + start
            out.lot_len = end - start
        elif ai == AI_21:
            out.serial = u + start
            out.serial_len = end - start
        seen |= 1 << ai
    if out.gtin == NULL:
        return fail(out, E_NO_GTIN, 0, 0)
    return E_NONE


cdef inline bint gtin_ok(const unsigned char* g) noexcept:
    cdef int total = 0, i
    for i in range(13):
        total += (g[i] - 48) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10 == g[13] - 48


cdef str udi_error_text(Udi* u):
    cdef int e = u.error
    cdef str ai = AI_NAME[u.error_ai].decode("ascii")
    cdef Py_ssize_t pos = u.error_pos
    if e == E_SYMBOLOGY:
        return "unsupported symbology identifier"
    if e == E_EMPTY:
        return "empty UDI"
    if e == E_EXPECTED_PAREN:
        return f"expected ( at {pos}"
    if e == E_UNTERMINATED:
        return f"unterminated AI at {pos}"
    if e == E_UNSUPPORTED_AI:
        return f"unsupported AI at {pos}"
    if e == E_DUPLICATE:
        return f"duplicate AI {ai} at {pos}"
    if e == E_WRONG_LENGTH:
        return f"AI {ai} wrong length at {pos}"
    if e == E_BAD_AI:
        return f"bad AI at {pos}"
    if e == E_TRUNCATED:
        return f"AI {ai} truncated at {pos}"
    if e == E_EMPTY_VALUE:
        return f"AI {ai} empty at {pos}"
    if e == E_NON_NUMERIC:
        return f"AI {ai} non-numeric at {pos}"
    if e == E_INVALID_CHAR:
        return f"AI {ai} invalid character at {pos}"
    if e == E_TOO_LONG:
        return f"AI {ai} longer than {AI_LEN[u.error_ai]} at {pos} (missing separator?)"
    if e == E_CHECK_DIGIT:
        return f"GTIN check digit wrong at {pos}"
    if e == E_BAD_DATE:
        return f"AI {ai} invalid date at {pos}"
    return "no GTIN (AI 01)"


# ---- the catalog, prepared for C lookups ------------------------------------------------------

cdef class NativeCatalog:
    """Catalog items sorted by GTIN (as a number) with their pre-rendered HL7 fragments."""

    cdef Py_ssize_t count
    cdef uint64_t* keys
    cdef unsigned char* chargeable
    cdef unsigned char* high_value
    cdef const char** ft1
    cdef Py_ssize_t* ft1_len
    cdef const char** zud
    cdef Py_ssize_t* zud_len
    cdef list keep_alive
    cdef Py_ssize_t mean_fragments  # mean FT1 + ZUD fragment length, for a first estimate of a batch's size
    cdef Py_ssize_t* slots  # open addressing: index into the arrays, -1 = empty
    cdef uint64_t mask

    def __cinit__(self, catalog):
        items = list(catalog)
        cdef Py_ssize_t n = len(items), i
        self.count = n
        cdef Py_ssize_t total_fragments = 0
        self.mean_fragments = 0
        self.keep_alive = []
        self.keys = <uint64_t*>malloc((n + 1) * sizeof(uint64_t))
        self.chargeable = <unsigned char*>malloc(n + 1)
        self.high_value = <unsigned char*>malloc(n + 1)
        self.ft1 = <const char**>malloc((n + 1) * sizeof(char*))
        self.ft1_len = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self.zud = <const char**>malloc((n + 1) * sizeof(char*))
        self.zud_len = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self.mask = 15
        while self.mask + 1 < 2 * (n + 1):
            self.mask = self.mask * 2 + 1
        self.slots = <Py_ssize_t*>malloc((self.mask + 1) * sizeof(Py_ssize_t))
        if self.slots == NULL:
            raise MemoryError()
        for i in range(<Py_ssize_t>self.mask + 1):
            self.slots[i] = -1
        if (self.keys == NULL or self.chargeable == NULL or self.high_value == NULL or self.ft1 == NULL
                or self.ft1_len == NULL or self.zud == NULL or self.zud_len == NULL):
            raise MemoryError()
        for i in range(n):
            item = items[i]
            ft1 = item_ft1_fragment(item)
            zud = item_zud_fragment(item)
            self.keep_alive.append(ft1)
            self.keep_alive.append(zud)
            self.keys[i] = int(item.gtin)
            self.chargeable[i] = 1 if item.chargeable else 0
            self.high_value[i] = 1 if item.high_value else 0
            self.ft1[i] = PyBytes_AS_STRING(ft1)
            self.ft1_len[i] = PyBytes_GET_SIZE(ft1)
            self.zud[i] = PyBytes_AS_STRING(zud)
            self.zud_len[i] = PyBytes_GET_SIZE(zud)
            self.slots[self.probe(self.keys[i])] = i
            total_fragments += self.ft1_len[i] + self.zud_len[i]
        if n:
            self.mean_fragments = total_fragments // n

    def __dealloc__(self):
        free(self.slots)
        free(self.keys)
        free(self.chargeable)
        free(self.high_value)
        free(self.ft1)
        free(self.ft1_len)
        free(self.zud)
        free(self.zud_len)

    cdef inline uint64_t probe(self, uint64_t key) noexcept:
        """The slot holding key, or the empty slot where it would go."""
        cdef uint64_t h = (key * <uint64_t>0x9E3779B97F4A7C15) >> 40
        cdef Py_ssize_t at
        while True:
            h &= self.mask
            at = self.slots[h]
            if at < 0 or self.keys[at] == key:
                return h
            h += 1

    cdef Py_ssize_t find(self, const unsigned char* gtin) noexcept:
        cdef uint64_t key = 0
        cdef int i
        for i in range(14):
            key = key * 10 + (gtin[i] - 48)
        return self.slots[self.probe(key)]


cdef NativeCatalog native_catalog(catalog):
    cached = catalog.native_cache.get("compiled")
    if cached is None:
        cached = NativeCatalog(catalog)
        catalog.native_cache["compiled"] = cached
    return <NativeCatalog>cached


# ---- consumed items: a C hash set of (GTIN, serial) ----------------------------------------------

cdef enum:
    SERIAL_MAX = 20  # AI 21 is X..20
    TAG_EMPTY = 0
    TAG_DELETED = 1


cdef struct ItemKey:
    uint64_t gtin
    uint64_t words[3]  # the serial, zero-padded to 24 bytes (set 82 has no NUL, so the padding is unambiguous)


cdef inline uint64_t key_hash(const ItemKey* k) noexcept:
    cdef uint64_t h = k.gtin * <uint64_t>0x9E3779B97F4A7C15
    h = (h ^ k.words[0]) * <uint64_t>0xBF58476D1CE4E5B9
    h = (h ^ k.words[1]) * <uint64_t>0x94D049BB133111EB
    h = (h ^ k.words[2]) * <uint64_t>0x9E3779B97F4A7C15
    return h ^ (h >> 29)


cdef inline uint32_t key_tag(uint64_t h) noexcept:
    """A 32-bit fingerprint of the hash, never TAG_EMPTY or TAG_DELETED."""
    return <uint32_t>(h >> 32) | 2


cdef inline void key_set(ItemKey* k, const unsigned char* gtin, const unsigned char* serial,
                         Py_ssize_t n) noexcept:
    cdef uint64_t g = 0
    cdef int i
    for i in range(14):
        g = g * 10 + (gtin[i] - 48)
    k.gtin = g
    k.words[0] = 0
    k.words[1] = 0
    k.words[2] = 0
    memcpy(k.words, serial, n)


cdef inline bint key_equal(const ItemKey* a, const ItemKey* b) noexcept:
    return (a.gtin == b.gtin and a.words[0] == b.words[0] and a.words[1] == b.words[1]
            and a.words[2] == b.words[2])


cdef bint key_from_text(object key, ItemKey* out) noexcept:
    """Fill out from a "<14 digits>/<serial, 1..20 of GS1 set 82>" str; False when key is not one."""
    cdef Py_ssize_t n, i
    cdef const unsigned char* s
    if not PyUnicode_CheckExact(key):
        return False
    s = <const unsigned char*>PyUnicode_AsUTF8AndSize(key, &n)
    if s == NULL:
        PyErr_Clear()
        return False
    if n < 16 or n > 15 + SERIAL_MAX or s[14] != b'/':
        return False
    for i in range(14):
        if not is_digit(s[i]):
            return False
    for i in range(15, n):
        if not CSET82[s[i]]:
            return False
    key_set(out, s, s + 15, n - 15)
    return True


cdef class ConsumedSet:
    """Item keys ``"<gtin>/<serial>"`` already charged, kept as a C hash set (no Python object per key).

    Open addressing with linear probing over a 4-byte fingerprint array (small enough to stay in cache);
    the 32-byte keys are read only when a fingerprint matches.
    """

    cdef uint32_t* tags
    cdef ItemKey* keys
    cdef Py_ssize_t mask
    cdef Py_ssize_t used  # live keys
    cdef Py_ssize_t filled  # live keys and deleted slots

    def __cinit__(self, keys=()):
        self.tags = <uint32_t*>calloc(16, sizeof(uint32_t))
        self.keys = <ItemKey*>malloc(16 * sizeof(ItemKey))
        if self.tags == NULL or self.keys == NULL:
            raise MemoryError()
        self.mask = 15
        self.used = 0
        self.filled = 0

    def __init__(self, keys=()):
        for key in keys:
            self.add(key)

    def __dealloc__(self):
        free(self.tags)
        free(self.keys)

    cdef Py_ssize_t find(self, const ItemKey* k) noexcept:
        """The slot holding k, or -1."""
        cdef uint64_t h = key_hash(k)
        cdef uint32_t tag = key_tag(h), t
        cdef Py_ssize_t at = <Py_ssize_t>(h & <uint64_t>self.mask)
        while True:
            t = self.tags[at]
            if t == TAG_EMPTY:
                return -1
            if t == tag and key_equal(&self.keys[at], k):
                return at
            at = (at + 1) & self.mask

    cdef int resize(self, Py_ssize_t live) except -1:
        cdef Py_ssize_t cap = 16, i, at
        cdef uint32_t* old_tags = self.tags
        cdef ItemKey* old_keys = self.keys
        cdef Py_ssize_t old_cap = self.mask + 1
        cdef uint64_t h
        while cap < 2 * (live + 1):
            cap *= 2
        cdef uint32_t* tags = <uint32_t*>calloc(cap, sizeof(uint32_t))
        cdef ItemKey* keys = <ItemKey*>malloc(cap * sizeof(ItemKey))
        if tags == NULL or keys == NULL:
            free(tags)
            free(keys)
            raise MemoryError()
        for i in range(old_cap):
            if old_tags[i] > TAG_DELETED:
                h = key_hash(&old_keys[i])
                at = <Py_ssize_t>(h & <uint64_t>(cap - 1))
                while tags[at] != TAG_EMPTY:
                    at = (at + 1) & (cap - 1)
                tags[at] = old_tags[i]
                keys[at] = old_keys[i]
        self.tags = tags
        self.keys = keys
        self.mask = cap - 1
        self.filled = self.used
        free(old_tags)
        free(old_keys)
        return 0

    cdef int reserve(self, Py_ssize_t more) except -1:
        """Make room for ``more`` keys at once (one rehash instead of one per doubling)."""
        if 2 * (self.filled + more) > self.mask + 1:
            self.resize(self.used + more)
        return 0

    cdef int insert(self, const ItemKey* k) except -1:
        """1 when k was added, 0 when it was already there."""
        cdef Py_ssize_t at, tomb = -1
        cdef uint64_t h
        cdef uint32_t tag, t
        if 2 * (self.filled + 1) > self.mask + 1:
            self.resize(self.used + 1)
        h = key_hash(k)
        tag = key_tag(h)
        at = <Py_ssize_t>(h & <uint64_t>self.mask)
        while True:
            t = self.tags[at]
            if t == TAG_EMPTY:
                break
            if t == TAG_DELETED:
                if tomb < 0:
                    tomb = at
            elif t == tag and key_equal(&self.keys[at], k):
                return 0
            at = (at + 1) & self.mask
        if tomb >= 0:
            at = tomb
        else:
            self.filled += 1
        self.tags[at] = tag
        self.keys[at] = k[0]
        self.used += 1
        return 1

    def add(self, key):
        """Add an item key; ItemKeyError when it is not ``"<14 digits>/<serial>"``."""
        cdef ItemKey k
        if not key_from_text(key, &k):
            raise ItemKeyError(f"not an item key: {key!r}")
        self.insert(&k)

    def discard(self, key):
        """Remove an item key if present (an item given back unused and restocked)."""
        cdef ItemKey k
        cdef Py_ssize_t at
        if not key_from_text(key, &k):
            return
        at = self.find(&k)
        if at >= 0:
            self.tags[at] = TAG_DELETED
            self.used -= 1

    def copy(self):
        """An independent copy."""
        cdef ConsumedSet other = ConsumedSet()
        cdef Py_ssize_t cap = self.mask + 1
        cdef uint32_t* tags = <uint32_t*>malloc(cap * sizeof(uint32_t))
        cdef ItemKey* keys = <ItemKey*>malloc(cap * sizeof(ItemKey))
        if tags == NULL or keys == NULL:
            free(tags)
            free(keys)
            raise MemoryError()
        memcpy(tags, self.tags, cap * sizeof(uint32_t))
        memcpy(keys, self.keys, cap * sizeof(ItemKey))
        free(other.tags)
        free(other.keys)
        other.tags = tags
        other.keys = keys
        other.mask = self.mask
        other.used = self.used
        other.filled = self.filled
        return other

    def __contains__(self, key):
        cdef ItemKey k
        if not key_from_text(key, &k):
            return False
        return self.find(&k) >= 0

    def __len__(self):
        return self.used

    def __iter__(self):
        cdef Py_ssize_t i, n
        cdef char text[15 + 24]
        cdef const char* serial
        keys = []
        for i in range(self.mask + 1):
            if self.tags[i] > TAG_DELETED:
                put_digits(text, <long long>self.keys[i].gtin, 14)
                text[14] = b'/'
                serial = <const char*>self.keys[i].words
                n = 0
                while n < 24 and serial[n] != 0:
                    n += 1
                memcpy(text + 15, serial, n)
                keys.append(PyUnicode_DecodeASCII(text, 15 + n, NULL))
        return iter(keys)

    def __repr__(self):
        return f"ConsumedSet({len(self)} keys)"


# ---- the batch --------------------------------------------------------------------------------

_device_ids = {}


cdef bytes device_charge_prefix(object device, const char* encoded, Py_ssize_t n):
    cdef void* hit = PyDict_GetItem(_device_ids, device)
    if hit != NULL:
        return <bytes>hit
    if len(_device_ids) >= DEVICE_ID_CACHE_LIMIT:
        _device_ids.clear()
    prefix = hashlib.sha256(PyBytes_FromStringAndSize(encoded, n)).hexdigest()[:10].upper().encode("ascii")
    _device_ids[device] = prefix
    return prefix


cdef enum:
    DEVICE_SLOTS = 1024  # direct-mapped cache of charge-id prefixes by device id
    DEVICE_NAME_MAX = 48


cdef struct DevicePrefix:
    Py_ssize_t size  # 0 = empty
    char name[DEVICE_NAME_MAX]
    char prefix[10]


cdef DevicePrefix device_slots[DEVICE_SLOTS]


cdef int cached_charge_prefix(object device, const unsigned char* name, Py_ssize_t n, char* out) except -1:
    """Write the 10-character device part of the charge id; a C cache keyed by the UTF-8 id avoids the dict."""
    cdef uint64_t h = 14695981039346656037ULL
    cdef Py_ssize_t i
    cdef DevicePrefix* slot = NULL
    if n <= DEVICE_NAME_MAX:
        for i in range(n):
            h = (h ^ name[i]) * 1099511628211ULL
        slot = &device_slots[(h ^ (h >> 32)) & (DEVICE_SLOTS - 1)]
        if slot.size == n and memcmp(slot.name, name, n) == 0:
            memcpy(out, slot.prefix, 10)
            return 0
    prefix = device_charge_prefix(device, <const char*>name, n)
    memcpy(out, PyBytes_AS_STRING(prefix), 10)
    if slot != NULL:
        slot.size = n
        memcpy(slot.name, name, n)
        memcpy(slot.prefix, out, 10)
    return 0


cdef inline int text_field(object value, const unsigned char** data, Py_ssize_t* size) noexcept:
    """0 = ok, 1 = not a str, 2 = not encodable as UTF-8."""
    if not PyUnicode_CheckExact(value):
        return 1
    data[0] = <const unsigned char*>PyUnicode_AsUTF8AndSize(value, size)
    if data[0] == NULL:
        PyErr_Clear()
        return 2
    return 0


cdef inline bint all_blank(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] != 32 and s[i] != 9 and s[i] != 13 and s[i] != 10:
            return False
    return True


cdef const char* FIELD_NAMES[7]
FIELD_NAMES[:] = [b"device", b"seq", b"ts_ms", b"admission", b"udi", b"operator", b"dept"]


cdef extern from *:
    """
    /* Exact int of at most two 30-bit digits read straight from the object (CPython < 3.12 layout);
       0 when the caller must use the API. */
    static inline int spd_small_long(PyObject* o, long long* out) {
    #if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
        Py_ssize_t size = Py_SIZE(o);
        const digit* d = ((PyLongObject*)o)->ob_digit;
        switch (size) {
            case 0: *out = 0; return 1;
            case 1: *out = (long long)d[0]; return 1;
            case -1: *out = -(long long)d[0]; return 1;
            case 2: *out = ((long long)d[1] << PyLong_SHIFT) | d[0]; return 1;
            case -2: *out = -(((long long)d[1] << PyLong_SHIFT) | d[0]); return 1;
        }
    #endif
        (void)o; (void)out;
        return 0;
    }
    """
    bint small_long "spd_small_long"(PyObject*, long long*) noexcept


# The events are Python objects scattered over the heap: ask for the next ones while this one is
# worked on (the item objects of the next tuple, the tuple after it).
cdef extern from *:
    """
    static inline void spd_prefetch_event(PyObject* next, PyObject* after) {
        __builtin_prefetch(after);
        if (PyTuple_Check(next) && PyTuple_GET_SIZE(next) == 7) {
            for (Py_ssize_t i = 0; i < 7; i++) __builtin_prefetch(PyTuple_GET_ITEM(next, i));
        }
    }
    """
    void prefetch_event "spd_prefetch_event"(PyObject*, PyObject*) noexcept


cdef extern from "Python.h":
    # borrowed-reference access: no reference counting on the per-event path
    bint tuple_check "PyTuple_Check"(PyObject*)
    Py_ssize_t tuple_size "PyTuple_GET_SIZE"(PyObject*)
    PyObject* tuple_item "PyTuple_GET_ITEM"(PyObject*, Py_ssize_t)
    bint unicode_check_exact "PyUnicode_CheckExact"(PyObject*)
    const char* utf8_and_size "PyUnicode_AsUTF8AndSize"(PyObject*, Py_ssize_t*)
    bint long_check_exact "PyLong_CheckExact"(PyObject*)
    long long long_as_ll "PyLong_AsLongLongAndOverflow"(PyObject*, int*)


cdef inline bint local_time_ok(long long ts_ms, long long offset_ms) noexcept:
    """0 <= ts_ms + offset_ms < MAX_LOCAL_MS, the twin's rule, without overflowing near the int64 limits.

    Only the local time is bounded: a scan at 9999-12-31 20:00 local west of UTC has a UTC time in year
    10000, one at 1970-01-01 03:00 local east of UTC a negative one; both are valid.
    """
    if ts_ms < -2 * MAX_LOCAL_MS or ts_ms > 2 * MAX_LOCAL_MS:  # |offset_ms| <= 14 h, far below MAX_LOCAL_MS
        return False
    return 0 <= ts_ms + offset_ms < MAX_LOCAL_MS


cdef enum:
    BAD_NONE = 0
    BAD_SHAPE
    BAD_NOT_INT
    BAD_SEQ_RANGE
    BAD_TS_RANGE
    BAD_NOT_STR
    BAD_NOT_UTF8
    BAD_EMPTY_DEVICE


cdef int check_event(PyObject* raw, long long offset_ms, const unsigned char** text, Py_ssize_t* size,
                     long long* seq, long long* ts, int* bad_field) noexcept:
    """BAD_NONE when the event is well formed (filling text/size/seq/ts), else what is wrong."""
    cdef int i, overflow
    cdef long long value
    cdef PyObject* field
    if not tuple_check(raw) or tuple_size(raw) != 7:
        return BAD_SHAPE
    for i in range(7):
        bad_field[0] = i
        field = tuple_item(raw, i)
        if i == 1 or i == 2:
            if not long_check_exact(field):
                return BAD_NOT_INT
            overflow = 0
            if not small_long(field, &value):
                value = long_as_ll(field, &overflow)
            if i == 1:
                if overflow or value < 0 or value > MAX_SEQ:
                    return BAD_SEQ_RANGE
                seq[0] = value
            else:
                if overflow or not local_time_ok(value, offset_ms):
                    return BAD_TS_RANGE
                ts[0] = value
            continue
        if not unicode_check_exact(field):
            return BAD_NOT_STR
        text[i] = <const unsigned char*>utf8_and_size(field, &size[i])
        if text[i] == NULL:
            PyErr_Clear()
            return BAD_NOT_UTF8
        if i == 0 and size[0] == 0:
            return BAD_EMPTY_DEVICE
    return BAD_NONE


cdef str bad_event_text(int bad, int i):
    name = FIELD_NAMES[i].decode("ascii")
    if bad == BAD_SHAPE:
        return "event is not a 7-tuple"
    if bad == BAD_NOT_INT:
        return f"{name} must be int"
    if bad == BAD_SEQ_RANGE:
        return f"seq out of range 0..{MAX_SEQ}"
    if bad == BAD_TS_RANGE:
        return "ts_ms out of range"
    if bad == BAD_NOT_STR:
        return f"{name} must be str"
    if bad == BAD_NOT_UTF8:
        return f"{name} is not encodable as UTF-8"
    return "empty device id"


cdef str iso_date(long long y, int m, int d):
    return f"{y:04d}-{m:02d}-{d:02d}"


cdef ConsumedSet consumed_set(object consumed):
    if type(consumed) is not ConsumedSet:
        raise TypeError(f"consumed must be gateway.bridge._cbridge.ConsumedSet, not {type(consumed).__name__}")
    return <ConsumedSet>consumed


def charge_compact(events, catalog, consumed, config):
    """Charge a batch of events; see gateway.bridge.types.CompactBatch for the result layout."""
    # inputs are checked in the twin's order, so that both raise the same error for the same call
    cdef ConsumedSet used = consumed_set(consumed)
    fragments, slots = message_template(config)
    cdef long long offset_ms = utc_offset_ms(config)  # within ±14 h (local_time_ok relies on it)
    cdef NativeCatalog cat = native_catalog(catalog)
    # A tuple of the events: the batch holds its own reference to every event for the whole call. The
    # events are read through borrowed references and UTF-8 pointers, and the call can let other
    # threads run (hashing a long device id releases the GIL, any allocation can run a finaliser);
    # reading the caller's list, a thread clearing it would free the events under our feet.
    cdef tuple evs = tuple(events)
    cdef Py_ssize_t n_events = len(evs), e, k, n_frag = len(fragments), fixed_len = 0, need, idx
    cdef ItemKey item_key
    cdef Buf status, ends, udi_out
    cdef Buf messages
    cdef const char* frag_data[32]
    cdef Py_ssize_t frag_len[32]
    cdef int slot_kind[32]
    cdef const unsigned char* text[7]
    cdef Py_ssize_t size[7]
    cdef long long seq = 0, ts = 0, local_ms, scan_days, scan_year, ms_of_day
    cdef int scan_month, scan_day
    cdef Udi udi
    cdef char time_text[14]
    cdef char cid[20]
    cdef char expiry_text[8]
    cdef Py_ssize_t expiry_len
    cdef char* out
    cdef int64_t end_offset
    cdef list details = []
    cdef str detail
    cdef int code, bad, bad_field = 0
    cdef PyObject* raw
    if n_frag > 32:
        raise RuntimeError("template has more fragments than the compiled bridge expects")
    for k in range(n_frag):
        frag_data[k] = PyBytes_AS_STRING(fragments[k])
        frag_len[k] = PyBytes_GET_SIZE(fragments[k])
        fixed_len += frag_len[k]
    for k in range(n_frag - 1):
        slot_kind[k] = int(slots[k])
    status.obj = ends.obj = udi_out.obj = NULL
    messages.obj = NULL
    try:
        buf_open(&status, n_events + 1)  # one byte per event, written without a check
        buf_open(&messages, first_reserve(n_events, fixed_len + 3 * 14 + 2 * 20 + 22 + cat.mean_fragments + 96))
        used.reserve(n_events if n_events < 65536 else 65536)  # more as they are charged (insert grows it)
        buf_open(&ends, first_reserve(n_events + 1, 8))
        buf_open(&udi_out, first_reserve(n_events, 40))
        for e in range(n_events):
            raw = tuple_item(<PyObject*>evs, e)
            if e + 2 < n_events:
                prefetch_event(tuple_item(<PyObject*>evs, e + 1), tuple_item(<PyObject*>evs, e + 2))
            bad = check_event(raw, offset_ms, text, size, &seq, &ts, &bad_field)
            if bad != BAD_NONE:
                status.data[status.size] = ST_BAD_EVENT
                status.size += 1
                details.append(bad_event_text(bad, bad_field))
                continue
            local_ms = ts + offset_ms
            scan_days = local_ms // MS_PER_DAY
            ms_of_day = local_ms - scan_days * MS_PER_DAY
            civil_from_days(scan_days, &scan_year, &scan_month, &scan_day)
            code = 0
            if all_blank(text[3], size[3]):
                code = ST_MISSING_PATIENT
                detail = "empty admission number"
            elif parse_udi(text[4], size[4], scan_year, &udi) != E_NONE:
                code = ST_BAD_UDI
                detail = udi_error_text(&udi)
            else:
                idx = cat.find(udi.gtin)
                if idx < 0:
                    code = ST_UNKNOWN_ITEM
                    detail = f"GTIN {udi.gtin[:14].decode('ascii')} not in catalog"
                elif udi.has_expiry and days_from_civil(udi.exp_year, udi.exp_month, udi.exp_day) < scan_days:
                    code = ST_EXPIRED
                    detail = (f"expired {iso_date(udi.exp_year, udi.exp_month, udi.exp_day)}, "
                              f"scanned {iso_date(scan_year, scan_month, scan_day)}")
                elif not cat.chargeable[idx]:
                    code = ST_NOT_CHARGEABLE
                    detail = f"GTIN {udi.gtin[:14].decode('ascii')} is not chargeable"
                elif udi.serial_len == 0 and cat.high_value[idx]:
                    code = ST_MISSING_SERIAL
                    detail = f"high-value GTIN {udi.gtin[:14].decode('ascii')} scanned without serial (AI 21)"
            if code == 0 and udi.serial_len:
                # one hash probe: add now; a key that was already there is a re-used serial
                key_set(&item_key, udi.gtin, udi.serial, udi.serial_len)
                if not used.insert(&item_key):
                    code = ST_SERIAL_ALREADY_CONSUMED
                    detail = (f"serial {udi.serial[:udi.serial_len].decode('ascii')} of GTIN "
                              f"{udi.gtin[:14].decode('ascii')} already consumed")
            if code:
                status.data[status.size] = code
                status.size += 1
                details.append(detail)
                continue

            # -- render the charge line
            cached_charge_prefix(<object>tuple_item(raw, 0), text[0], size[0], cid)
            put_digits(cid + 10, seq, 10)
            put_digits(time_text, scan_year, 4)
            put2(time_text + 4, scan_month)
            put2(time_text + 6, scan_day)
            put2(time_text + 8, <int>(ms_of_day // 3600000))
            put2(time_text + 10, <int>((ms_of_day // 60000) % 60))
            put2(time_text + 12, <int>((ms_of_day // 1000) % 60))
            expiry_len = 0
            if udi.has_expiry:
                put_digits(expiry_text, udi.exp_year, 4)
                put2(expiry_text + 4, udi.exp_month)
                put2(expiry_text + 6, udi.exp_day)
                expiry_len = 8
            need = (fixed_len + 3 * 14 + 2 * 20 + 14 + 8 + cat.ft1_len[idx] + cat.zud_len[idx]
                    + 5 * (2 * size[3] + 2 * size[6] + size[5] + size[0] + udi.lot_len + udi.serial_len))
            buf_reserve(&messages, need)
            out = messages.data + messages.size
            out = put(out, frag_data[0], frag_len[0])
            for k in range(n_frag - 1):
                code = slot_kind[k]
                if code == S_TIME:
                    out = put(out, time_text, 14)
                elif code == S_CHARGE_ID:
                    out = put(out, cid, 20)
                elif code == S_ADMISSION:
                    out = put_escaped(out, text[3], size[3])
                elif code == S_DEPT:
                    out = put_escaped(out, text[6], size[6])
                elif code == S_ITEM_FT1:
                    out = put(out, cat.ft1[idx], cat.ft1_len[idx])
                elif code == S_OPERATOR:
                    out = put_escaped(out, text[5], size[5])
                elif code == S_GTIN:
                    out = put(out, <const char*>udi.gtin, 14)
                elif code == S_LOT:
                    out = put_escaped(out, udi.lot, udi.lot_len)
                elif code == S_SERIAL:
                    out = put_escaped(out, udi.serial, udi.serial_len)
                elif code == S_EXPIRY:
                    out = put(out, expiry_text, expiry_len)
                elif code == S_ITEM_ZUD:
                    out = put(out, cat.zud[idx], cat.zud_len[idx])
                elif code == S_DEVICE:
                    out = put_escaped(out, text[0], size[0])
                out = put(out, frag_data[k + 1], frag_len[k + 1])
            messages.size = out - messages.data
            end_offset = messages.size
            buf_reserve(&ends, 8)
            memcpy(ends.data + ends.size, &end_offset, 8)
            ends.size += 8
            buf_reserve(&udi_out, 24 + udi.lot_len + udi.serial_len)
            out = udi_out.data + udi_out.size
            out = put(out, <const char*>udi.gtin, 14)
            if udi.has_expiry:
                out = put(out, expiry_text, 8)
            else:
                out = put(out, b"00000000", 8)
            out[0] = <char>udi.lot_len
            out = put(out + 1, <const char*>udi.lot, udi.lot_len)
            out[0] = <char>udi.serial_len
            out = put(out + 1, <const char*>udi.serial, udi.serial_len)
            udi_out.size = out - udi_out.data
            status.data[status.size] = 0
            status.size += 1
        ends_array = array("q")
        ends_array.frombytes(buf_close(&ends))
        message_bytes = buf_close_in_place(&messages)
        return CompactBatch(buf_close(&status), message_bytes, ends_array, buf_close(&udi_out), details)
    finally:
        Py_XDECREF(status.obj)
        Py_XDECREF(messages.obj)
        Py_XDECREF(ends.obj)
        Py_XDECREF(udi_out.obj)



# ---- credits: items given back unused after they were charged --------------------------------------

cdef enum:
    CREDIT_FIELDS = 17
    CF_DEVICE = 0
    CF_SEQ = 1
    CF_TS = 2
    CF_OPERATOR = 3
    CF_DEPT = 4
    CF_ORIGINAL = 5
    CF_ADMISSION = 6
    CF_GTIN = 7
    CF_LOT = 8
    CF_SERIAL = 9
    CF_EXPIRY = 10
    CF_ITEM_CODE = 11
    CF_CHARGE_CODE = 12
    CF_NAME = 13
    CF_SPEC = 14
    CF_MANUFACTURER = 15
    CF_PRICE = 16

assert len(CreditRequest._fields) == CREDIT_FIELDS, "CreditRequest changed: update _cbridge.pyx"
cdef tuple CREDIT_FIELD_NAMES = CreditRequest._fields


cdef inline bint is_upper_hex(unsigned char c) noexcept:
    return is_digit(c) or (65 <= c <= 70)


cdef bint gs1_text_ok(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    if n > SERIAL_MAX:
        return False
    for i in range(n):
        if not CSET82[s[i]]:
            return False
    return True


cdef bint iso_date_ok(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef int i, month, day
    cdef long long year
    if n != 10 or s[4] != b'-' or s[7] != b'-':
        return False
    for i in range(10):
        if i != 4 and i != 7 and not is_digit(s[i]):
            return False
    year = two(s) * 100 + two(s + 2)
    month = two(s + 5)
    day = two(s + 8)
    return 1 <= month <= 12 and 1 <= day <= days_in_month(year, month)


cdef str credit_field_problem(int i, const unsigned char* s, Py_ssize_t n):
    """What is wrong with the content of text field i of a credit, or None."""
    cdef Py_ssize_t k
    if i == CF_DEVICE and n == 0:
        return "empty device id"
    if i == CF_ORIGINAL:
        if n != 20:
            return "original_charge_id is not a charge id"
        for k in range(20):
            if not (is_upper_hex(s[k]) if k < 10 else is_digit(s[k])):
                return "original_charge_id is not a charge id"
    if i == CF_GTIN:
        if n != 14:
            return "gtin is not a valid GTIN"
        for k in range(14):
            if not is_digit(s[k]):
                return "gtin is not a valid GTIN"
        if not gtin_ok(s):
            return "gtin is not a valid GTIN"
    if i == CF_LOT and not gs1_text_ok(s, n):
        return "lot is not a GS1 lot (X..20)"
    if i == CF_SERIAL and not gs1_text_ok(s, n):
        return "serial is not a GS1 serial (X..20)"
    if i == CF_EXPIRY and n and not iso_date_ok(s, n):
        return "expiry is not YYYY-MM-DD"
    if i == CF_CHARGE_CODE and n == 0:
        return "empty charge code"
    return None


cdef str check_credit(PyObject* raw, long long offset_ms, const unsigned char** text, Py_ssize_t* size,
                      long long* ints, int* code):
    """None when the credit request is well formed (filling text/size/ints), else the detail (code set)."""
    cdef int i, overflow
    cdef long long value
    cdef PyObject* field
    cdef str problem
    code[0] = ST_BAD_EVENT
    if not tuple_check(raw) or tuple_size(raw) != CREDIT_FIELDS:
        return f"credit is not a {CREDIT_FIELDS}-tuple"
    for i in range(CREDIT_FIELDS):
        field = tuple_item(raw, i)
        if i == CF_SEQ or i == CF_TS or i == CF_PRICE:
            name = CREDIT_FIELD_NAMES[i]
            if not long_check_exact(field):
                return f"{name} must be int"
            overflow = 0
            value = long_as_ll(field, &overflow)
            if i == CF_SEQ and (overflow or value < 0 or value > MAX_SEQ):
                return f"seq out of range 0..{MAX_SEQ}"
            if i == CF_TS and (overflow or not local_time_ok(value, offset_ms)):
                return "ts_ms out of range"
            if i == CF_PRICE and (overflow or value < 0 or value > MAX_CREDIT_FEN):
                return f"price_fen out of range 0..{MAX_CREDIT_FEN}"
            ints[i] = value
            continue
        if not unicode_check_exact(field):
            return f"{CREDIT_FIELD_NAMES[i]} must be str"
        text[i] = <const unsigned char*>utf8_and_size(field, &size[i])
        if text[i] == NULL:
            PyErr_Clear()
            return f"{CREDIT_FIELD_NAMES[i]} is not encodable as UTF-8"
        problem = credit_field_problem(i, text[i], size[i])
        if problem is not None:
            return problem
    if all_blank(text[CF_ADMISSION], size[CF_ADMISSION]):
        code[0] = ST_MISSING_PATIENT
        return "empty admission number"
    code[0] = 0
    return None


cdef char* put_yuan(char* out, long long fen) noexcept:
    """Integer fen as yuan with two decimals (fen is never negative here)."""
    cdef char digits[24]
    cdef int n = 0
    cdef long long whole = fen // 100
    while True:
        digits[n] = <char>(48 + whole % 10)
        n += 1
        whole //= 10
        if whole == 0:
            break
    while n:
        n -= 1
        out[0] = digits[n]
        out += 1
    out[0] = b'.'
    put2(out + 1, <int>(fen % 100))
    return out + 3


cdef char* put_amount(char* out, long long fen) noexcept:
    out = put_yuan(out, fen)
    return put(out, b"&CNY", 4)


def credit_compact(credits, config):
    """Render credits (FT1-6 CD) for items given back unused; see gateway.bridge.types.CreditRequest."""
    fragments, slots = credit_template(config)
    cdef long long offset_ms = utc_offset_ms(config)
    cdef tuple reqs = tuple(credits)  # our own references for the whole call (see charge_compact)
    cdef Py_ssize_t n = len(reqs), e, k, n_frag = len(fragments), fixed_len = 0, need, text_len
    cdef Buf status, ends, udi_out, messages
    cdef const char* frag_data[40]
    cdef Py_ssize_t frag_len[40]
    cdef int slot_kind[40]
    cdef const unsigned char* text[CREDIT_FIELDS]
    cdef Py_ssize_t size[CREDIT_FIELDS]
    cdef long long ints[CREDIT_FIELDS]
    cdef long long local_ms, days, year, ms_of_day
    cdef int month, day, code, j
    cdef char time_text[14]
    cdef char cid[20]
    cdef char expiry_text[8]
    cdef Py_ssize_t expiry_len
    cdef char* out
    cdef int64_t end_offset
    cdef list details = []
    cdef str detail
    cdef PyObject* raw
    if n_frag > 40:
        raise RuntimeError("credit template has more fragments than the compiled bridge expects")
    for k in range(n_frag):
        frag_data[k] = PyBytes_AS_STRING(fragments[k])
        frag_len[k] = PyBytes_GET_SIZE(fragments[k])
        fixed_len += frag_len[k]
    for k in range(n_frag - 1):
        slot_kind[k] = int(slots[k])
    status.obj = ends.obj = udi_out.obj = messages.obj = NULL
    try:
        buf_open(&status, n + 1)
        buf_open(&messages, first_reserve(n, fixed_len + 600))
        buf_open(&ends, first_reserve(n + 1, 8))
        buf_open(&udi_out, first_reserve(n, 64))
        for e in range(n):
            raw = tuple_item(<PyObject*>reqs, e)
            detail = check_credit(raw, offset_ms, text, size, ints, &code)
            if detail is not None:
                status.data[status.size] = code
                status.size += 1
                details.append(detail)
                continue
            local_ms = ints[CF_TS] + offset_ms
            days = local_ms // MS_PER_DAY
            ms_of_day = local_ms - days * MS_PER_DAY
            civil_from_days(days, &year, &month, &day)
            put_digits(time_text, year, 4)
            put2(time_text + 4, month)
            put2(time_text + 6, day)
            put2(time_text + 8, <int>(ms_of_day // 3600000))
            put2(time_text + 10, <int>((ms_of_day // 60000) % 60))
            put2(time_text + 12, <int>((ms_of_day // 1000) % 60))
            cached_charge_prefix(<object>tuple_item(raw, CF_DEVICE), text[CF_DEVICE], size[CF_DEVICE], cid)
            put_digits(cid + 10, ints[CF_SEQ], 10)
            expiry_len = 0
            if size[CF_EXPIRY]:
                memcpy(expiry_text, text[CF_EXPIRY], 4)
                memcpy(expiry_text + 4, text[CF_EXPIRY] + 5, 2)
                memcpy(expiry_text + 6, text[CF_EXPIRY] + 8, 2)
                expiry_len = 8
            text_len = 0
            for j in range(CREDIT_FIELDS):
                if j != CF_SEQ and j != CF_TS and j != CF_PRICE:
                    text_len += size[j]
            need = fixed_len + 64 + 2 * 40 + 3 * 14 + 20 + 8 + 5 * 3 * text_len
            buf_reserve(&messages, need)
            out = messages.data + messages.size
            out = put(out, frag_data[0], frag_len[0])
            for k in range(n_frag - 1):
                code = slot_kind[k]
                if code == S_TIME:
                    out = put(out, time_text, 14)
                elif code == S_CHARGE_ID:
                    out = put(out, cid, 20)
                elif code == S_ORIGINAL_ID:
                    out = put(out, <const char*>text[CF_ORIGINAL], 20)
                elif code == S_ADMISSION:
                    out = put_escaped(out, text[CF_ADMISSION], size[CF_ADMISSION])
                elif code == S_DEPT:
                    out = put_escaped(out, text[CF_DEPT], size[CF_DEPT])
                elif code == S_ITEM_FT1:
                    out = put_escaped(out, text[CF_CHARGE_CODE], size[CF_CHARGE_CODE])
                    out[0] = b'^'
                    out = put_escaped(out + 1, text[CF_NAME], size[CF_NAME])
                    out = put(out, b"|||1|", 5)
                    out = put_amount(out, ints[CF_PRICE])
                    out[0] = b'|'
                    out = put_amount(out + 1, ints[CF_PRICE])
                elif code == S_OPERATOR:
                    out = put_escaped(out, text[CF_OPERATOR], size[CF_OPERATOR])
                elif code == S_GTIN:
                    out = put(out, <const char*>text[CF_GTIN], 14)
                elif code == S_LOT:
                    out = put_escaped(out, text[CF_LOT], size[CF_LOT])
                elif code == S_SERIAL:
                    out = put_escaped(out, text[CF_SERIAL], size[CF_SERIAL])
                elif code == S_EXPIRY:
                    out = put(out, expiry_text, expiry_len)
                elif code == S_ITEM_ZUD:
                    out = put_escaped(out, text[CF_ITEM_CODE], size[CF_ITEM_CODE])
                    out[0] = b'|'
                    out = put_escaped(out + 1, text[CF_SPEC], size[CF_SPEC])
                    out[0] = b'|'
                    out = put_escaped(out + 1, text[CF_MANUFACTURER], size[CF_MANUFACTURER])
                elif code == S_DEVICE:
                    out = put_escaped(out, text[CF_DEVICE], size[CF_DEVICE])
                out = put(out, frag_data[k + 1], frag_len[k + 1])
            messages.size = out - messages.data
            end_offset = messages.size
            buf_reserve(&ends, 8)
            memcpy(ends.data + ends.size, &end_offset, 8)
            ends.size += 8
            buf_reserve(&udi_out, 24 + size[CF_LOT] + size[CF_SERIAL])
            out = udi_out.data + udi_out.size
            out = put(out, <const char*>text[CF_GTIN], 14)
            if expiry_len:
                out = put(out, expiry_text, 8)
            else:
                out = put(out, b"00000000", 8)
            out[0] = <char>size[CF_LOT]
            out = put(out + 1, <const char*>text[CF_LOT], size[CF_LOT])
            out[0] = <char>size[CF_SERIAL]
            out = put(out + 1, <const char*>text[CF_SERIAL], size[CF_SERIAL])
            udi_out.size = out - udi_out.data
            status.data[status.size] = 0
            status.size += 1
        ends_array = array("q")
        ends_array.frombytes(buf_close(&ends))
        return CompactBatch(buf_close(&status), buf_close(&messages), ends_array, buf_close(&udi_out), details)
    finally:
        Py_XDECREF(status.obj)
        Py_XDECREF(messages.obj)
        Py_XDECREF(ends.obj)
        Py_XDECREF(udi_out.obj)
