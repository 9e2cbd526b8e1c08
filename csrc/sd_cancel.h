/* sd_cancel: let a long C call notice SIGINT/SIGTERM while the Python interpreter waits.
 *
 * sd_cancel_begin installs a handler that sets the flag and then calls the handler that
 * was there before (Python's, which records the signal so that the interpreter raises
 * KeyboardInterrupt once the call returns); sd_cancel_end(slot) restores it.
 * Calls nest; sd_cancel_begin returns the slot to pass to sd_cancel_end, or -1 if full. */
#ifndef SD_CANCEL_H
#define SD_CANCEL_H

int sd_cancel_begin(volatile int *flag);
void sd_cancel_end(int slot);

#endif
