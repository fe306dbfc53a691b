/**
 * @file kvpages.h
 * @brief Umbrella header of kvpages: includes the whole public C API.
 *
 * @defgroup kvpages kvpages
 * @{
 * @}
 */
#ifndef KVPAGES_H
#define KVPAGES_H

#include "kvpages/common.h"
#include "kvpages/version.h"
#include "kvpages/features.h"
#include "kvpages/status.h"
#include "kvpages/types.h"
#include "kvpages/config.h"
#include "kvpages/cache.h"
#include "kvpages/metadata.h"
#include "kvpages/ops.h"
#include "kvpages/group.h"
#include "kvpages/attention.h"
#include "kvpages/device.h"
#include "kvpages/pool.h"
#include "kvpages/store.h"
#include "kvpages/serialize.h"
#include "kvpages/json.h"
#include "kvpages/plugin.h"

#endif /* KVPAGES_H */
