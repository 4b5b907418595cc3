/* scratch_dir.h -- the temporary store directory a fuzz harness works in, and its removal at exit. */
#ifndef EMBPS_FUZZ_SCRATCH_DIR_H
#define EMBPS_FUZZ_SCRATCH_DIR_H

#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

/* Removes the files of dir (a store holds no subdirectories), then dir itself. */
static inline void scratch_dir_remove(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char file[512];
        snprintf(file, sizeof(file), "%s/%s", dir, e->d_name);
        if (e->d_name[0] != '.')
            unlink(file);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

#endif
