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

struct embps_store {
    char dir[PATH_MAX];
    pm_sim *sim;
    int volatile_;              /* caches: no flushes, nothing survives a crash */
    int lock_fd;                /* flock on LOCK: one process per store */
    pthread_mutex_t lock;       /* guards the table list */
    pthread_rwlock_t drop_lock; /* read: a server call holds a table; write: a drop */
    embps_table **tables;
    size_t n_tables, cap_tables;
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
    return rc ? fail(EMBPS_E_IO, "cannot sync directory %s: %s", dir, strerror(errno)) : EMBPS_OK;
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

static int add_table(embps_store *s, embps_table *t)
{
    if (s->n_tables == s->cap_tables) {
        size_t cap = s->cap_tables ? 2 * s->cap_tables : 8;
        embps_table **grown = realloc(s->tables, cap * sizeof(*grown));
        if (!grown)
            return fail(EMBPS_E_NOMEM, "out of memory adding table %s", table_name(t));
        s->tables = grown;
        s->cap_tables = cap;
    }
    s->tables[s->n_tables++] = t;
    return EMBPS_OK;
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

/* Opens every table file; removes files of table creations a crash interrupted. */
static int open_tables(embps_store *s)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return fail(EMBPS_E_IO, "cannot list %s: %s", s->dir, strerror(errno));
    int rc = EMBPS_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        char path[PATH_MAX];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", s->dir, e->d_name) >= sizeof(path))
            continue;
        if (has_suffix(e->d_name, TMP_SUFFIX)) {
            unlink(path);
        } else if (has_suffix(e->d_name, TABLE_SUFFIX)) {
            embps_table *t;
            rc = table_open(path, s->sim, s->volatile_, &t);
            if (!rc && (rc = add_table(s, t)))
                table_close(t);
        }
    }
    closedir(d);
    return rc;
}

/* ---- opening and closing ------------------------------------------------- */

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
    /* Writer preference: a steady stream of server calls must not starve a drop. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->drop_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
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
    for (size_t i = 0; i < s->n_tables; i++)
        table_close(s->tables[i]);
    free(s->tables);
    pm_sim_free(s->sim);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_mutex_destroy(&s->lock);
    pthread_rwlock_destroy(&s->drop_lock);
    free(s);
}

uint64_t embps_store_persist_points(const embps_store *s)
{
    return pm_sim_points(s->sim);
}

size_t embps_store_table_count(embps_store *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->n_tables;
    pthread_mutex_unlock(&s->lock);
    return n;
}

const char *embps_store_table_name(embps_store *s, size_t i)
{
    pthread_mutex_lock(&s->lock);
    const char *name = i < s->n_tables ? table_name(s->tables[i]) : NULL;
    pthread_mutex_unlock(&s->lock);
    return name;
}

/* ---- its tables ---------------------------------------------------------- */

static ssize_t find_table(embps_store *s, const char *name)
{
    for (size_t i = 0; i < s->n_tables; i++)
        if (strcmp(table_name(s->tables[i]), name) == 0)
            return (ssize_t)i;
    return -1;
}

int embps_table_get(embps_store *s, const char *name, embps_table **out)
{
    pthread_mutex_lock(&s->lock);
    ssize_t i = name ? find_table(s, name) : -1;
    if (i >= 0)
        *out = s->tables[i];
    pthread_mutex_unlock(&s->lock);
    return i >= 0 ? EMBPS_OK : fail(EMBPS_E_NOT_FOUND, "no table named '%s'", name ? name : "");
}

int embps_table_acquire(embps_store *s, const char *name, embps_table **out)
{
    pthread_rwlock_rdlock(&s->drop_lock);
    int rc = embps_table_get(s, name, out);
    if (rc)
        pthread_rwlock_unlock(&s->drop_lock);
    return rc;
}

void embps_table_release(embps_store *s)
{
    pthread_rwlock_unlock(&s->drop_lock);
}

/* The file is complete and synced before its rename makes the table exist. */
int embps_table_create(embps_store *s, const char *name, const embps_table_spec *spec, embps_table **out)
{
    int rc = table_name_check(name, name ? strlen(name) : 0);
    if (!rc)
        rc = spec_is_valid(spec);
    if (rc)
        return rc;
    char tmp[PATH_MAX], path[PATH_MAX];
    if ((rc = table_path(s, name, TMP_SUFFIX, tmp)) || (rc = table_path(s, name, TABLE_SUFFIX, path)))
        return rc;
    pthread_mutex_lock(&s->lock);
    embps_table *t = NULL;
    if (find_table(s, name) >= 0) {
        rc = fail(EMBPS_E_EXISTS, "table '%s' already exists", name);
        goto out;
    }
    unlink(tmp);
    rc = table_create_file(tmp, name, spec);
    if (!rc && rename(tmp, path))
        rc = fail(EMBPS_E_IO, "cannot publish %s: %s", path, strerror(errno));
    if (!rc)
        rc = sync_dir(s->dir);
    if (!rc)
        rc = table_open(path, s->sim, s->volatile_, &t);
    if (!rc && (rc = add_table(s, t)))
        table_close(t);
    if (rc)
        unlink(tmp);
    else
        *out = t;
out:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int embps_table_drop(embps_store *s, const char *name)
{
    pthread_rwlock_wrlock(&s->drop_lock);
    pthread_mutex_lock(&s->lock);
    ssize_t i = name ? find_table(s, name) : -1;
    int rc = EMBPS_OK;
    if (i < 0) {
        rc = fail(EMBPS_E_NOT_FOUND, "no table named '%s'", name ? name : "");
    } else {
        char path[PATH_MAX];
        table_path(s, name, TABLE_SUFFIX, path);
        table_close(s->tables[i]);
        s->tables[i] = s->tables[--s->n_tables];
        if (unlink(path))
            rc = fail(EMBPS_E_IO, "cannot remove %s: %s", path, strerror(errno));
        else
            rc = sync_dir(s->dir);
    }
    pthread_mutex_unlock(&s->lock);
    pthread_rwlock_unlock(&s->drop_lock);
    return rc;
}
