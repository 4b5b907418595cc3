/* fuzz_table_file.c -- libFuzzer harness of the table file opener: a store opening a corrupt or
 * truncated table file must refuse it with a status, never crash, and a table it accepts must be
 * a valid one that every operation can use.
 *
 * An input is a table file whose trailing zeros may be cut off (a sparse file reads them back).
 * It is opened twice as the one table of a store in a temp directory: as it is (mostly a
 * truncated file), and with the zeros restored and its header checksum recomputed, so that the
 * fuzzer reaches past the checksum into the spec, the layout and the index recovery rebuilds. */
#include "embps_store.h"
#include "scratch_dir.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TABLE_NAME "fz"
#define MAX_PADDED_BYTES (1u << 20)   /* files restored beyond this are opened as they are only */

static char dir[64], path[128];
/* Where the header keeps its checksum and the file's size, found at start-up. */
static size_t checksum_offset, file_bytes_offset;

/* Huge allocations asked for by a corrupt file must fail as NOMEM, not abort the run. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

#define REQUIRE(cond, ...)                                                           \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_table_file: " __VA_ARGS__);                        \
            fprintf(stderr, " (%s; last error: %s)\n", #cond, embps_errormsg());     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* The header checksum, FNV-1a over the header's bytes before it, as table.c computes it. */
static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t sum = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++)
        sum = (sum ^ p[i]) * 0x100000001B3ull;
    return sum;
}

static void remove_dir(void)
{
    scratch_dir_remove(dir);
}

static embps_store *open_store(int *rc)
{
    embps_store_config cfg = {.dir = dir};
    embps_store *s = NULL;
    *rc = embps_store_open(&cfg, &s);
    return *rc ? NULL : s;
}

/* Finds the first offset at which the 8 bytes equal value (or the bytes before them hash to it). */
static size_t find_u64(const uint8_t *header, size_t len, uint64_t value, int hashed)
{
    for (size_t off = 8; off + 8 <= len; off += 8) {
        uint64_t stored;
        memcpy(&stored, header + off, 8);
        if (stored == (hashed ? fnv1a(header, off) : value))
            return off;
    }
    return 0;
}

/* Creates a table with the store, to learn where its header keeps the checksum and the file's
 * size: the table's layout stays table.c's alone. */
static void find_header_fields(void)
{
    int rc;
    embps_store *s = open_store(&rc);
    REQUIRE(s, "cannot open a store in %s", dir);
    embps_table_spec spec = {.dim = 2, .capacity = 16, .lr = 0.1};
    embps_table *t;
    REQUIRE(embps_table_create(s, TABLE_NAME, &spec, &t) == EMBPS_OK, "cannot create a table");
    embps_store_close(s);
    uint8_t header[4096];
    struct stat st;
    int fd = open(path, O_RDONLY);
    REQUIRE(fd >= 0 && fstat(fd, &st) == 0 && read(fd, header, sizeof(header)) == (ssize_t)sizeof(header),
            "cannot read %s", path);
    close(fd);
    unlink(path);
    checksum_offset = find_u64(header, sizeof(header), 0, 1);
    file_bytes_offset = find_u64(header, checksum_offset, (uint64_t)st.st_size, 0);
    REQUIRE(checksum_offset && file_bytes_offset, "no checksum or size found in a fresh table's header");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("PMEM2_FORCE_GRANULARITY", "CACHE_LINE", 0);   /* files in tmpfs are not PM */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof(dir), "%s/embps-fuzz-table-XXXXXX", base);
    REQUIRE(mkdtemp(dir), "cannot create a temp directory in %s", base);
    snprintf(path, sizeof(path), "%s/" TABLE_NAME ".table", dir);
    atexit(remove_dir);
    find_header_fields();
    return 0;
}

static void write_file(const uint8_t *data, size_t size, size_t file_bytes)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0, "cannot create %s", path);
    REQUIRE(write(fd, data, size) == (ssize_t)size, "cannot write %s", path);
    REQUIRE(ftruncate(fd, (off_t)file_bytes) == 0, "cannot size %s", path);
    close(fd);
}

/* Every operation on a table the store accepted, on the keys it holds and on others. */
static void exercise(embps_table *t)
{
    REQUIRE(embps_table_check(t) == EMBPS_OK, "the store accepted a table that fails its check");
    embps_table_spec spec;
    embps_table_stats stats;
    embps_table_describe(t, &spec, &stats);
    /* The initializer checks the spec as a create does: a spec no create accepts is no table. */
    REQUIRE(embps_initializer_fill(&spec, NULL, 0, NULL, 0) == EMBPS_OK, "the store accepted a table with an "
            "invalid spec");
    enum { BATCH = 64 };
    const size_t dim = spec.dim, sf = stats.state_floats;
    uint64_t keys[BATCH + 2];
    float *rows = calloc(BATCH + 2, dim * sizeof(float)), *state = calloc(BATCH + 2, (sf + 1) * sizeof(float));
    uint8_t found[BATCH + 2];
    REQUIRE(rows && state, "out of memory for %zu x %zu floats", dim, sf);
    uint64_t cursor = 0;
    size_t n = 0;
    REQUIRE(embps_table_export(t, &cursor, BATCH, keys, rows, state, &n) == EMBPS_OK, "export failed");
    keys[n++] = 7;   /* and two keys that are most likely missing */
    keys[n++] = 0x5eed;
    REQUIRE(embps_table_lookup(t, keys, n, rows, n * dim, state, n * sf, found) == EMBPS_OK, "lookup failed");
    for (size_t i = 0; i < n * dim; i++)
        rows[i] = 0.5f;
    int rc = embps_table_update(t, keys, n, rows, n * dim);
    REQUIRE(rc == EMBPS_OK || rc == EMBPS_E_CAPACITY || rc == EMBPS_E_NONFINITE, "update: status %d", rc);
    uint64_t deleted;
    REQUIRE(embps_table_delete(t, keys, n / 2, &deleted) == EMBPS_OK, "delete failed");
    REQUIRE(embps_table_check(t) == EMBPS_OK, "the table's operations left it invalid");
    free(rows);
    free(state);
}

/* Only the stable calls (open, get): a store may refuse to open, or open and answer for the table it
 * could not open with the reason. */
static void open_and_exercise(void)
{
    int rc;
    embps_store *s = open_store(&rc);
    embps_table *t = NULL;
    if (s)
        rc = embps_table_get(s, TABLE_NAME, &t);
    if (rc == EMBPS_OK) {
        exercise(t);
    } else {
        REQUIRE(rc != EMBPS_E_NOT_FOUND, "the store opened %s as another table", path);
        REQUIRE(rc == EMBPS_E_CORRUPT || rc == EMBPS_E_IO || rc == EMBPS_E_NOMEM, "refused with status %d", rc);
        REQUIRE(embps_errormsg()[0], "refused without a message");
    }
    embps_store_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_file(data, size, size);
    open_and_exercise();
    if (size >= checksum_offset + 8) {
        uint8_t *signed_ = malloc(size);
        memcpy(signed_, data, size);
        uint64_t sum = fnv1a(signed_, checksum_offset), file_bytes;
        memcpy(signed_ + checksum_offset, &sum, 8);
        memcpy(&file_bytes, signed_ + file_bytes_offset, 8);
        write_file(signed_, size, file_bytes >= size && file_bytes <= MAX_PADDED_BYTES ? file_bytes : size);
        free(signed_);
        open_and_exercise();
    }
    unlink(path);
    return 0;
}
