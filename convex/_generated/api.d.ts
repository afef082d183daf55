/* eslint-disable */
/**
 * Generated `api` utility.
 *
 * THIS CODE IS AUTOMATICALLY GENERATED.
 *
 * To regenerate, run `npx convex dev`.
 * @module
 */

import type {
  ApiFromModules,
  FilterApi,
  FunctionReference,
} from "convex/server";
import type * as apiTokens from "../apiTokens.js";
import type * as bulkJobs from "../bulkJobs.js";
import type * as containerJobs from "../containerJobs.js";
import type * as envTemplates from "../envTemplates.js";
import type * as executorHosts from "../executorHosts.js";
import type * as model_attempts from "../model/attempts.js";
import type * as model_containerJobs from "../model/containerJobs.js";
import type * as model_containers from "../model/containers.js";
import type * as model_idPrefixes from "../model/idPrefixes.js";
import type * as model_jobs from "../model/jobs.js";
import type * as model_quotas from "../model/quotas.js";
import type * as model_retention from "../model/retention.js";
import type * as model_webhooks from "../model/webhooks.js";
import type * as model_workItems from "../model/workItems.js";
import type * as validators from "../validators.js";
import type * as webhooks from "../webhooks.js";
import type * as workItems from "../workItems.js";

/**
 * A utility for referencing Convex functions in your app's API.
 *
 * Usage:
 * ```js
 * const myFunctionReference = api.myModule.myFunction;
 * ```
 */
declare const fullApi: ApiFromModules<{
  apiTokens: typeof apiTokens;
  bulkJobs: typeof bulkJobs;
  containerJobs: typeof containerJobs;
  envTemplates: typeof envTemplates;
  executorHosts: typeof executorHosts;
  "model/attempts": typeof model_attempts;
  "model/containerJobs": typeof model_containerJobs;
  "model/containers": typeof model_containers;
  "model/idPrefixes": typeof model_idPrefixes;
  "model/jobs": typeof model_jobs;
  "model/quotas": typeof model_quotas;
  "model/retention": typeof model_retention;
  "model/webhooks": typeof model_webhooks;
  "model/workItems": typeof model_workItems;
  validators: typeof validators;
  webhooks: typeof webhooks;
  workItems: typeof workItems;
}>;
export declare const api: FilterApi<
  typeof fullApi,
  FunctionReference<any, "public">
>;
export declare const internal: FilterApi<
  typeof fullApi,
  FunctionReference<any, "internal">
>;
