/* store.c -- a store: a directory of table files, and the crash simulator they share. */
#include "optimizer.h"
#include "pm_region.h"
#include "status.h"
#include "table.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define TABLE_SUFFIX ".table"
#define TMP_SUFFIX ".creating"
#define LOCK_FILE "LOCK"

/* A name the store holds: a table being created, open, unopenable, or being dropped.  While it is
 * here no other table can take the name, so its file is this table's alone. */
typedef struct {
    char name[EMBPS_NAME_MAX + 1];
    embps_table *table;         /* NULL while being created, or if the file could not be opened */
    int open_status;            /* why the file could not be opened at start-up (EMBPS_OK if it was) */
    char *open_error;
    uint64_t refs;              /* held by embps_table_acquire */
    int dropping;
} table_entry;

struct embps_store {
    char dir[PATH_MAX];
    pm_sim *sim;
    int volatile_;              /* caches: no flushes, nothing survives a crash */
    int lock_fd;                /* flock on LOCK: one process per store */
    pthread_mutex_t lock;       /* guards the entries */
    pthread_cond_t released;    /* the last reference to a table being dropped went */
    table_entry **entries;
    size_t n_entries, cap_entries;
};

/* ---- the directory ------------------------------------------------------- */

static int table_path(const embps_store *s, const char *name, const char *suffix, char *out)
{
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s%s", s->dir, name, suffix) >= PATH_MAX)
        return fail(EMBPS_E_INVALID_ARGUMENT, "path of table %s is too long", name);
    return EMBPS_OK;
}

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd < 0 || fsync(fd);
    if (fd >= 0)
        close(fd);
    return rc ? fail(EMBPS_E_IO, "cannot sync the store's directory: %s", strerror(errno)) : EMBPS_OK;
}

/* mkdir -p: the store's directory and every missing parent. */
static int make_dirs(const char *dir)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s", dir) >= sizeof(path))
        return fail(EMBPS_E_INVALID_ARGUMENT, "store directory path too long");
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char end = *p;
        *p = '\0';
        if (mkdir(path, 0755) && errno != EEXIST)
            return fail(EMBPS_E_IO, "cannot create %s: %s", path, strerror(errno));
        if (!end)
            return EMBPS_OK;
        *p = end;
    }
}

static int has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n > k && strcmp(name + n - k, suffix) == 0;
}

/* Two processes writing one table would corrupt it; the kernel drops the lock when a process dies. */
static int lock_store(embps_store *s)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/" LOCK_FILE, s->dir) >= sizeof(path))
        return fail(EMBPS_E_INVALID_ARGUMENT, "store directory path too long");
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0)
        return fail(EMBPS_E_IO, "cannot open %s: %s", path, strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB))
        return fail(EMBPS_E_IO, "store %s is in use by another process (%s)", s->dir,
                    errno == EWOULDBLOCK ? "locked" : strerror(errno));
    return EMBPS_OK;
}

/* ---- the entries (called with the lock held) ------------------------------ */

static table_entry *find_entry(const embps_store *s, const char *name)
{
    for (size_t i = 0; i < s->n_entries; i++)
        if (strcmp(s->entries[i]->name, name) == 0)
            return s->entries[i];
    return NULL;
}

/* An open table, or one whose file could not be opened. */
static int is_listed(const table_entry *e)
{
    return !e->dropping && (e->table || e->open_status);
}

static int add_entry(embps_store *s, const char *name, table_entry **out)
{
    if (s->n_entries == s->cap_entries) {
        size_t cap = s->cap_entries ? 2 * s->cap_entries : 8;
        table_entry **grown = realloc(s->entries, cap * sizeof(*grown));
        if (!grown)
            return fail(EMBPS_E_NOMEM, "out of memory adding table %s", name);
        s->entries = grown;
        s->cap_entries = cap;
    }
    table_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return fail(EMBPS_E_NOMEM, "out of memory adding table %s", name);
    snprintf(e->name, sizeof(e->name), "%s", name);
    s->entries[s->n_entries++] = e;
    *out = e;
    return EMBPS_OK;
}

static void remove_entry(embps_store *s, table_entry *e)
{
    for (size_t i = 0; i < s->n_entries; i++) {
        if (s->entries[i] == e) {
            s->entries[i] = s->entries[--s->n_entries];
            break;
        }
    }
    free(e->open_error);
    free(e);
}

/* The entry of an open table, or the status saying why there is none. */
static int find_open(embps_store *s, const char *name, table_entry **out)
{
    table_entry *e = name ? find_entry(s, name) : NULL;
    if (e && is_listed(e) && !e->table)
        return fail(e->open_status, "table '%s' could not be opened: %s", e->name, e->open_error);
    if (!e || !is_listed(e))
        return fail(EMBPS_E_NOT_FOUND, "no table named '%s'", name ? name : "");
    *out = e;
    return EMBPS_OK;
}

/* ---- opening and closing ------------------------------------------------- */

/* A table file found at start-up.  One that cannot be opened keeps its name, so that no create
 * replaces the file, and says why whenever the table is asked for; the store serves the others. */
static int open_table_file(embps_store *s, const char *file)
{
    char name[EMBPS_NAME_MAX + 1], path[PATH_MAX];
    size_t len = strlen(file) - strlen(TABLE_SUFFIX);
    if (len > EMBPS_NAME_MAX)
        return EMBPS_OK;   /* not a file this store made */
    memcpy(name, file, len);
    name[len] = '\0';
    if (table_name_check(name, len))
        return EMBPS_OK;   /* not a name a create would accept */
    table_entry *e;
    int rc = add_entry(s, name, &e);
    if (rc)
        return rc;
    if (!(rc = table_path(s, name, TABLE_SUFFIX, path)))
        rc = table_open(path, s->sim, s->volatile_, &e->table);
    if (!rc && strcmp(table_name(e->table), name) != 0) {
        rc = fail(EMBPS_E_CORRUPT, "%s holds a table named '%s'", file, table_name(e->table));
        table_close(e->table);
        e->table = NULL;
    }
    if (rc) {
        e->open_status = rc;
        if (!(e->open_error = strdup(embps_errormsg())))
            return fail(EMBPS_E_NOMEM, "out of memory opening store");
    }
    return EMBPS_OK;
}

/* Opens every table file; removes files of table creations a crash interrupted. */
static int open_tables(embps_store *s)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return fail(EMBPS_E_IO, "cannot list %s: %s", s->dir, strerror(errno));
    int rc = EMBPS_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (has_suffix(e->d_name, TMP_SUFFIX))
            unlinkat(dirfd(d), e->d_name, 0);
        else if (has_suffix(e->d_name, TABLE_SUFFIX))
            rc = open_table_file(s, e->d_name);
    }
    closedir(d);
    return rc;
}

int embps_store_open(const embps_store_config *cfg, embps_store **out)
{
    if (!cfg || !cfg->dir || !cfg->dir[0])
        return fail(EMBPS_E_INVALID_ARGUMENT, "store directory not given");
    if (cfg->crash_sim && !(cfg->crash_evict_prob >= 0 && cfg->crash_evict_prob <= 1))
        return fail(EMBPS_E_INVALID_ARGUMENT, "crash_evict_prob must be in [0, 1]");
    embps_store *s = calloc(1, sizeof(*s));
    if (!s)
        return fail(EMBPS_E_NOMEM, "out of memory opening store");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->released, NULL);
    s->lock_fd = -1;
    s->volatile_ = cfg->volatile_tables;
    int rc = EMBPS_OK;
    if ((size_t)snprintf(s->dir, sizeof(s->dir), "%s", cfg->dir) >= sizeof(s->dir))
        rc = fail(EMBPS_E_INVALID_ARGUMENT, "store directory path too long");
    else
        rc = make_dirs(s->dir);
    if (!rc)
        rc = lock_store(s);
    if (!rc && cfg->crash_sim)
        rc = pm_sim_new(cfg->crash_at, cfg->crash_evict_prob, cfg->crash_seed, &s->sim);
    if (!rc)
        rc = open_tables(s);
    if (rc) {
        embps_store_close(s);
        return rc;
    }
    *out = s;
    return EMBPS_OK;
}

void embps_store_close(embps_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_entries; i++) {
        table_close(s->entries[i]->table);
        free(s->entries[i]->open_error);
        free(s->entries[i]);
    }
    free(s->entries);
    pm_sim_free(s->sim);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->released);
    free(s);
}

uint64_t embps_store_persist_points(const embps_store *s)
{
    return pm_sim_points(s->sim);
}

int embps_store_table_at(embps_store *s, size_t i, char *name)
{
    pthread_mutex_lock(&s->lock);
    size_t listed = 0;
    const table_entry *found = NULL;
    for (size_t k = 0; k < s->n_entries && !found; k++)
        if (is_listed(s->entries[k]) && listed++ == i)
            found = s->entries[k];
    if (found)
        memcpy(name, found->name, sizeof(found->name));
    pthread_mutex_unlock(&s->lock);
    return found ? EMBPS_OK : fail(EMBPS_E_NOT_FOUND, "the store lists %zu tables, not %zu", listed, i + 1);
}

/* ---- its tables ---------------------------------------------------------- */

int embps_table_get(embps_store *s, const char *name, embps_table **out)
{
    pthread_mutex_lock(&s->lock);
    table_entry *e;
    int rc = find_open(s, name, &e);
    if (!rc)
        *out = e->table;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int embps_table_acquire(embps_store *s, const char *name, embps_table **out)
{
    pthread_mutex_lock(&s->lock);
    table_entry *e;
    int rc = find_open(s, name, &e);
    if (!rc) {
        e->refs++;
        *out = e->table;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void embps_table_release(embps_store *s, embps_table *t)
{
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n_entries; i++) {
        table_entry *e = s->entries[i];
        if (e->table == t) {
            if (--e->refs == 0 && e->dropping)
                pthread_cond_broadcast(&s->released);
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

/* Takes the name for a table about to be created. */
static int reserve_name(embps_store *s, const char *name, table_entry **out)
{
    pthread_mutex_lock(&s->lock);
    table_entry *e = find_entry(s, name);
    int rc;
    if (!e)
        rc = add_entry(s, name, out);
    else if (e->dropping || !is_listed(e))
        rc = fail(EMBPS_E_EXISTS, "table '%s' is being %s", name, e->dropping ? "dropped" : "created");
    else if (!e->table)
        rc = fail(EMBPS_E_EXISTS, "table '%s' already exists but could not be opened (a drop removes its file): %s",
                  name, e->open_error);
    else
        rc = fail(EMBPS_E_EXISTS, "table '%s' already exists", name);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* The file is complete, synced and opened before its rename makes the table exist: a create that
 * fails leaves no file behind. */
static int make_table(embps_store *s, const char *name, const embps_table_spec *spec, embps_table **out)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    int rc;
    if ((rc = table_path(s, name, TMP_SUFFIX, tmp)) || (rc = table_path(s, name, TABLE_SUFFIX, path)))
        return rc;
    unlink(tmp);
    embps_table *t = NULL;
    int renamed = 0;
    rc = table_create_file(tmp, name, spec);
    if (!rc)
        rc = table_open(tmp, s->sim, s->volatile_, &t);
    if (!rc && !(renamed = rename(tmp, path) == 0))
        rc = fail(EMBPS_E_IO, "cannot publish %s: %s", file_label(path), strerror(errno));
    if (!rc)
        rc = sync_dir(s->dir);
    if (rc) {
        table_close(t);
        unlink(renamed ? path : tmp);
        return rc;
    }
    *out = t;
    return EMBPS_OK;
}

/* The store's lock is not held while the file is made: calls on other tables go on meanwhile. */
int embps_table_create(embps_store *s, const char *name, const embps_table_spec *spec, embps_table **out)
{
    int rc = table_name_check(name, name ? strlen(name) : 0);
    if (!rc)
        rc = spec_is_valid(spec);
    table_entry *e;
    if (rc || (rc = reserve_name(s, name, &e)))
        return rc;
    embps_table *t = NULL;
    rc = make_table(s, name, spec, &t);
    pthread_mutex_lock(&s->lock);
    if (rc)
        remove_entry(s, e);
    else
        e->table = t;
    pthread_mutex_unlock(&s->lock);
    if (!rc)
        *out = t;
    return rc;
}

/* The entry keeps the name until the file is gone, so that a create cannot publish a new file under it
 * first; only calls on this table wait for its references. */
int embps_table_drop(embps_store *s, const char *name)
{
    pthread_mutex_lock(&s->lock);
    table_entry *e = name ? find_entry(s, name) : NULL;
    if (!e || !is_listed(e)) {
        pthread_mutex_unlock(&s->lock);
        return fail(EMBPS_E_NOT_FOUND, "no table named '%s'", name ? name : "");
    }
    e->dropping = 1;   /* acquire and get answer NOT_FOUND from now on */
    while (e->refs)
        pthread_cond_wait(&s->released, &s->lock);
    embps_table *t = e->table;
    e->table = NULL;   /* a table allocated later at the same address must not match this entry */
    pthread_mutex_unlock(&s->lock);
    table_close(t);
    char path[PATH_MAX];
    int rc = table_path(s, e->name, TABLE_SUFFIX, path);
    if (!rc && unlink(path))
        rc = fail(EMBPS_E_IO, "cannot remove %s: %s", file_label(path), strerror(errno));
    if (!rc)
        rc = sync_dir(s->dir);
    pthread_mutex_lock(&s->lock);
    remove_entry(s, e);
    pthread_mutex_unlock(&s->lock);
    return rc;
}
